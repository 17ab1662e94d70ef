"""Pretrained weights by name (vitcli/convert/catalog.py): the table, name resolution, and the
one-line offline message, through the CLI. Nothing here downloads (tests/conftest.py sets
HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.convert.catalog import CATALOG, hub_id_for, looks_like_hub_id, resolve

runner = CliRunner()


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_every_entry_is_complete_and_every_figure_has_a_source():
    for name, p in CATALOG.items():
        assert name == p.name == name.lower() and " " not in name
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", p.hub_id), p.hub_id
        assert p.image_size in (224, 518) and 1 < p.params_m < 1000
        assert p.data and p.licence and p.family and p.params_source
        if p.imagenet:  # cite, never invent: a figure without a source is a defect
            assert p.source and re.fullmatch(r"\d\d\.\d % .+", p.imagenet), p
        else:
            assert not p.source
    hubs = [p.hub_id for p in CATALOG.values()]
    assert len(set(hubs)) == len(hubs)
    families = {p.family.split("+")[0].split(" ")[0] for p in CATALOG.values()}
    assert {"DINOv2", "CLIP", "SigLIP", "DeiT", "ViT"} <= families
    assert any(p.is_timm for p in CATALOG.values()) and not all(p.is_timm
                                                                for p in CATALOG.values())


def test_names_and_hub_ids_resolve():
    assert hub_id_for("dinov2-s") == "facebook/dinov2-small"
    assert hub_id_for("DINOv2-S ") == "facebook/dinov2-small"
    assert resolve("facebook/dinov2-small").name == "dinov2-s"
    assert hub_id_for("someone/own-vit") == "someone/own-vit"  # any Hub id passes through
    assert resolve("someone/own-vit") is None
    for value in ("dinov2-s", "facebook/dinov2-small", "timm/vit_small_patch14_dinov2.lvd142m"):
        assert looks_like_hub_id(value)
    for value in ("model.safetensors", "runs/train/exp/weights/best.safetensors",
                  "./a/b", "~/a", "a/b/c", "no such name"):
        assert not looks_like_hub_id(value)


def test_vit_models_pretrained_lists_the_table_in_80_columns():
    result = runner.invoke(app, ["models", "--pretrained"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    for p in CATALOG.values():
        assert p.name in result.output and p.hub_id in result.output  # ids never folded
        if p.imagenet:
            assert p.imagenet.split(" %")[0] in result.output
            assert p.source in result.output
    assert "81.1 % lin." in result.output and "Apache-2.0" in result.output


@pytest.mark.parametrize("name, repo, files", [
    ("dinov2-s", "facebook/dinov2-small",
     "config.json preprocessor_config.json model.safetensors"),
    ("timm/vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
     "config.json model.safetensors"),
])
def test_convert_from_hub_offline_says_which_files_to_fetch_in_one_line(tmp_path, name, repo,
                                                                         files):
    result = runner.invoke(app, ["convert", "--from-hub", name, "--out",
                                 str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1
    line = _one_line(result.output.split("…", 1)[-1])  # after the 'downloading' line
    assert line.startswith(f"error: cannot download {repo}: offline")
    assert f"`hf download {repo} {files} --local-dir" in line
    assert "vit convert" in line
    assert not (tmp_path / "m.safetensors").exists()


def test_train_init_by_name_offline_is_one_line_and_leaves_no_run(tmp_path, image_folder):
    result = runner.invoke(app, ["train", "--init", "deit-s-distilled", "--data",
                                 str(image_folder), "--project", str(tmp_path / "runs"),
                                 "--device", "cpu"])
    assert result.exit_code == 1
    line = _one_line(result.output)
    assert line.startswith("error: cannot download facebook/deit-small-distilled-patch16-224")
    assert "hf download facebook/deit-small-distilled-patch16-224 config.json" in line
    assert not (tmp_path / "runs").exists()


def test_train_init_unknown_name_is_one_line(tmp_path, image_folder):
    result = runner.invoke(app, ["train", "--init", "nothing-here", "--data", str(image_folder),
                                 "--project", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "--init nothing-here: no such file, nor a Hub id" in _one_line(result.output)


def test_train_init_from_a_cached_hub_repo_converts_once(tmp_path, monkeypatch, image_folder):
    """A Hub id found in the Hub cache: converted once into vitcli's cache, then fine-tuned."""
    from huggingface_hub import constants
    from transformers import ViTConfig, ViTForImageClassification

    model = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=5))
    snapshot = tmp_path / "hub" / "models--someone--tiny-vit" / "snapshots" / ("c" * 40)
    model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("c" * 40)
    (snapshot / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "size": {"height": 32, "width": 32}}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("VITCLI_CACHE", str(tmp_path / "vitcli-cache"))

    def train(name: str) -> str:
        result = runner.invoke(app, [
            "train", "--init", "someone/tiny-vit", "--data", str(image_folder), "--epochs", "1",
            "--batch-size", "8", "--freeze", "backbone", "--device", "cpu",
            "--project", str(tmp_path / "runs"), "--name", name,
            "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    first = train("a")
    assert "--init someone/tiny-vit: transformers ViT" in first and "converted to" in first
    assert "new head: 3 classes instead of 5" in first
    converted = list((tmp_path / "vitcli-cache" / "pretrained").glob("*.safetensors"))
    assert [p.name for p in converted] == [f"someone--tiny-vit--{'c' * 40}.safetensors"]
    assert "converted earlier" in train("b")
    assert Path(tmp_path / "runs" / "b" / "weights" / "last.safetensors").exists()
