"""The benchmark scripts still run against the library as it is (a smoke test at toy sizes:
their figures are for people to read, not for tests to time)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
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
    # 32-px images: vit-pico's 7×7 grid of 5-px patches at 35 px, width 64.
    assert "train step, default ViT 4×64 35 px" in out
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


# ------------------------------------------------------------ benchmarks/inference.py


def load_script(name: str):
    """benchmarks/NAME.py as a module (the folder is not a package), for its pure parts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_goal_is_met_only_when_every_round_clears_it():
    """Rounds of 1.85× and 5.53× printed 'goal int8 ≥ 2.5× … 3.69× met' (their median)."""
    bench = load_script("inference")
    assert bench.goal_verdict([1.85, 5.53], 2.5) == "UNSETTLED (1 of 2 rounds clear it)"
    assert bench.goal_verdict([2.6, 2.5, 3.1], 2.5) == "met"
    assert bench.goal_verdict([2.0, 2.4, 2.49], 2.5) == "MISSED"
    assert bench.goal_verdict([0.9, 1.1, 1.2], 1.0) == "UNSETTLED (2 of 3 rounds clear it)"


def test_the_speed_up_shows_its_rounds_spread_and_warns_when_they_disagree():
    bench = load_script("inference")
    spread = bench.Spread.of([1.85, 5.53, 2.10])
    assert (spread.median, spread.low, spread.high) == (2.10, 1.85, 5.53)
    assert str(spread) == "2.10× (1.85–5.53)"
    steady = bench.Spread.of([2.0, 2.3])  # 15 % apart: no warning
    assert bench.disagreement_warning({"ONNX Runtime int8": steady}) is None
    warning = bench.disagreement_warning({"ONNX Runtime int8": spread,
                                          "ONNX Runtime fp32": steady}, load=3.2)
    assert warning is not None and "ONNX Runtime int8 1.85–5.53×" in warning
    assert "fp32" not in warning and "load average 3.2" in warning
    assert "quieter machine" in warning and "--rounds" in warning


@pytest.mark.slow
def test_inference_benchmark_reports_honestly_in_80_columns(tmp_path: Path, tiny_model_file: Path):
    """A width-32 model runs at fp32 under auto, whatever the CPU: the report says so; the
    speed-ups carry their range; the verdicts state their rule; no line (but the one naming
    the data folder) is wider than 80 columns, with --data too."""
    data = make_image_folder(tmp_path / "shapes", per_class=3)
    out = run_benchmark("inference.py", "--model", str(tiny_model_file), "--data", str(data),
                        "--runs", "3", "--rounds", "2", "--batch", "4", "--threads", "1")
    assert "1 thread" in out and "(s)" not in out
    assert "--precision auto` run this model at fp32 here" in out.replace("\n  ", " ")
    assert re.search(r"ONNX Runtime int8 +[\d.]+ +[\d.]+× \([\d.]+–[\d.]+\)", out), out
    assert "goals (met = every round clears it; MISSED = none does" in out
    assert re.search(r"int8 ≥ 2\.5× PyTorch fp32 eager at batch 1: [\d.]+× \([\d.]+–[\d.]+\) "
                     r"(met|MISSED|UNSETTLED)", out.replace("\n  ", " ")), out
    assert "accuracy on" in out and "vs fp32" in out
    wide = [line for line in out.splitlines() if len(line) > 80 and str(data) not in line]
    assert not wide, wide


def test_inference_benchmark_leaves_no_files_behind(tmp_path: Path, monkeypatch):
    """It made a vit-bench-* folder (ONNX files, a random model) in the temp dir every run
    and never removed it."""
    bench = load_script("inference")
    seen = []
    monkeypatch.setattr(bench, "parse_args", lambda: None)
    monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bench, "measure", lambda args, workdir: seen.append(workdir)
                        or (workdir / "model.onnx").write_bytes(b"x"))
    bench.main()
    assert seen and seen[0].parent == tmp_path and not list(tmp_path.iterdir())


def test_small_data_help_says_every_default():
    """`--help` showed no defaults, and --threads and --seed had no help at all."""
    bench = load_script("small_data")
    parser = bench.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = " ".join(parser.format_help().split())  # as read, across line breaks
    for default in ("(default: 2.0)", "(default: 4000", "default: 16,24,32)",
                    "(default: 2)", "(default: 0)", "(default: tuned)"):
        assert default in text, default


def test_small_data_gives_vit_train_the_cnns_thread_count(monkeypatch):
    """--threads reached only the CNN: `vit train` picked its own count from the free cores,
    so the two sides of the comparison could train on different thread counts."""
    from types import SimpleNamespace

    import torch

    bench = load_script("small_data")
    given = {}

    def fake_train(options, **_):
        given["threads"] = options.threads
        raise SystemExit(0)  # the options are what this test is about

    monkeypatch.setattr("vitcli.training.trainer.train", fake_train)
    data = SimpleNamespace(x_train=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                           y_train=torch.arange(4) % 2, classes=["a", "b"],
                           x_test=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
                           y_test=torch.arange(2))
    with pytest.raises(SystemExit):
        bench.train_vit(data, 0.1, 0, None, threads=1)
    assert given["threads"] == 1


def test_small_data_refuses_fewer_images_than_the_cnns_batch_in_one_line(tmp_path: Path,
                                                                         capsys):
    """24 training images (fewer than the CNN's batch of 128) ended in a ZeroDivisionError."""
    bench = load_script("small_data")
    root = make_image_folder(tmp_path / "imgs", per_class=8)  # 24 images
    with pytest.raises(SystemExit) as stop:
        bench.main(["--data", str(root), "--minutes", "0.01", "--threads", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training images are fewer than the CNN's batch of 128" in err
    assert "Traceback" not in err
