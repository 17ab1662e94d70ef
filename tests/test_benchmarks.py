"""The benchmark scripts still run against the library as it is (a smoke test at toy sizes:
their figures are for people to read, not for tests to time)."""

from __future__ import annotations

import subprocess
import sys

from tests.test_train import ROOT, repo_env


def run_benchmark(script: str, *args: str) -> str:
    """Run benchmarks/SCRIPT with ARGS against this checkout; its stdout once it succeeded."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                            env=repo_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_data_throughput_runs_with_the_default_small_image_model():
    out = run_benchmark("data_throughput.py", "--images", "40", "--batch", "8", "--steps", "1",
                        "--threads", "1")
    # 32-px images: vit-pico's 5×5 grid of 7-px patches at 35 px, width 80.
    assert "train step, default ViT 4×80 35 px" in out
    assert "augment light (every step)" in out


def test_linear_probe_benchmark_prints_both_sides():
    out = run_benchmark("linear_probe.py", "--quick")
    assert "cached features (one forward pass + head)" in out
    assert "forward pass every epoch" in out and "measured" in out
    assert "best val top-1: cached" in out


def test_pretrained_cost_benchmark_runs_a_family_architecture():
    out = run_benchmark("pretrained_cost.py", "--quick", "--threads", "1")
    assert "toy DINOv2" in out and "ms per image" in out


def test_ood_scores_benchmark_compares_the_rules_on_every_kind():
    out = run_benchmark("ood_scores.py", "--seeds", "1", "--steps", "3", "--per-class", "8",
                        "--threads", "1")
    for kind in ("false unknown", "noise", "unrelated", "pink noise", "photo crops", "cross"):
        assert kind in out, kind
    for rule in ("max-softmax", "energy", "last block", "relative", "every block"):
        assert f"\n{rule} " in out, rule
    # 8 validation images: too few for 97.5 %, the largest score, 1 / 9 expected
    assert "8 validation images (expected false unknown 11.1%)" in out
