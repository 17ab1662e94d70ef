"""The model file: round trip, atomic writes, and refusal of everything that is not one."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES

from vitcli.errors import VitError
from vitcli.files import atomic_write
from vitcli.model.checkpoint import (
    check_model_file,
    load_model,
    read_header,
    read_metadata,
    save_model,
    save_tensors,
)
from vitcli.model.preprocess import Preprocessing


def test_round_trip_gives_the_same_logits_and_metadata(tmp_path, tiny_model):
    pre = Preprocessing(image_size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                        interpolation="bilinear", crop_fraction=0.875)
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      preprocessing=pre, extra={"source": "test"})
    loaded = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), tiny_model(x), atol=0, rtol=0)
    assert loaded.config == tiny_model.config
    assert loaded.class_names == CLASSES
    assert loaded.preprocessing == pre
    assert loaded.metadata["source"] == "test"
    assert loaded.metadata["format"] == "vitcli"
    assert not loaded.model.training


def test_load_at_another_image_size_resamples_and_updates_preprocessing(tiny_model_file):
    loaded = load_model(tiny_model_file, image_size=48)
    assert loaded.config.image_size == 48
    assert loaded.preprocessing.image_size == 48
    with torch.no_grad():
        assert loaded.model(torch.randn(1, 3, 48, 48)).shape == (1, len(CLASSES))


def test_metadata_reads_without_torch_weights(tiny_model_file):
    metadata = read_metadata(tiny_model_file)
    assert json.loads(metadata["class_names"]) == CLASSES
    assert json.loads(metadata["config"])["depth"] == 2


def test_wrong_number_of_class_names_is_refused(tmp_path, tiny_model):
    with pytest.raises(VitError, match="2 class names for a model with 3 outputs"):
        save_model(tmp_path / "m.safetensors", tiny_model, class_names=["a", "b"])


def test_atomic_write_leaves_no_temporary_files(tmp_path, tiny_model):
    save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES)
    save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES)  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_interrupted_write_keeps_the_old_file(tmp_path, tiny_model_file):
    before = tiny_model_file.read_bytes()

    def crash_half_way(tmp: Path) -> None:
        tmp.write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tiny_model_file, crash_half_way)
    assert tiny_model_file.read_bytes() == before
    assert [p.name for p in tiny_model_file.parent.iterdir()] == [tiny_model_file.name]
    load_model(tiny_model_file)  # still a good model


# ------------------------------------------------------------------------------ refusals


def _pickle_file(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))  # starts with \x80
    return path


def _zip_file(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:  # what torch.save writes: a zip of pickles
        z.writestr("archive/data.pkl", pickle.dumps({}))
    return path


@pytest.mark.parametrize("name, make", [
    ("model.pt", _pickle_file), ("model.pth", _zip_file), ("pytorch_model.bin", _pickle_file),
    ("last.ckpt", _zip_file), ("weights.safetensors", _zip_file),
])
def test_pickle_checkpoints_are_refused_with_how_to_convert(tmp_path, name, make):
    path = make(tmp_path / name)
    with pytest.raises(VitError, match="never unpickles") as info:
        load_model(path)
    assert str(path) in str(info.value) and "vit convert" in str(info.value)


def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) - 100])


def _corrupt_header(path: Path, good: bytes) -> None:
    (n,) = struct.unpack("<Q", good[:8])
    path.write_bytes(good[:8] + b"{" + b"\xff" * (n - 1) + good[8 + n:])


def _huge_header_length(path: Path, good: bytes) -> None:
    path.write_bytes(struct.pack("<Q", 10**12) + good[8:])


def _entry_not_object(path: Path, good: bytes) -> None:
    body = b'{"w": 1}'
    path.write_bytes(struct.pack("<Q", len(body)) + body)


def _bad_tensor_entry(path: Path, good: bytes) -> None:
    body = json.dumps({"w": {"dtype": "F32", "shape": [1]}}).encode()  # no data_offsets
    path.write_bytes(struct.pack("<Q", len(body)) + body)


def _rewrite_header(path: Path, good: bytes, change) -> None:
    """Same data, header JSON changed by `change(header)`, lengths kept consistent."""
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + n])
    change(header)
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + good[8 + n:])


def _shape_not_a_list(path: Path, good: bytes) -> None:
    _rewrite_header(path, good, lambda h: h["head.bias"].update(shape="abc"))


def _shape_missing(path: Path, good: bytes) -> None:
    _rewrite_header(path, good, lambda h: h["norm.weight"].update(shape=None))


def _metadata_not_an_object(path: Path, good: bytes) -> None:
    _rewrite_header(path, good, lambda h: h.update(__metadata__=[1, 2]))


@pytest.mark.parametrize("damage", [
    _truncated, _corrupt_header, _huge_header_length, _entry_not_object, _bad_tensor_entry,
    _shape_not_a_list, _shape_missing, _metadata_not_an_object,
])
def test_damaged_safetensors_files_are_refused(tmp_path, tiny_model_file, damage):
    path = tmp_path / "damaged.safetensors"
    damage(path, tiny_model_file.read_bytes())
    with pytest.raises(VitError, match="corrupt|truncated") as info:
        load_model(path)
    assert str(path) in str(info.value)
    # `vit info` reads the header alone (no torch load): the same one-line refusal.
    from typer.testing import CliRunner

    from vitcli.cli import app

    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {path}") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, this is text and not a model", "not a safetensors model file"),
])
def test_empty_and_non_model_files_are_refused(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(VitError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_plain_safetensors_without_vitcli_metadata_is_refused(tmp_path):
    path = save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(2)})
    with pytest.raises(VitError, match="not a vitcli model file") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(VitError, match="no such file"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(VitError, match="is a folder"):
        load_model(tmp_path)


def test_newer_format_version_asks_for_an_upgrade(tmp_path, tiny_model):
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      extra={"format_version": "99"})
    with pytest.raises(VitError, match="upgrade vitcli"):
        load_model(path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    del state["head.bias"]
    metadata = read_metadata(save_model(tmp_path / "good.safetensors", tiny_model,
                                        class_names=CLASSES))
    path = save_tensors(tmp_path / "bad.safetensors", state, metadata)
    with pytest.raises(VitError, match="missing head.bias"):
        load_model(path)


def _rewrite(path: Path, out: Path, *, tensors=None, config_changes=None) -> Path:
    """A copy of a model file with some tensors or config fields changed (still safetensors)."""
    from safetensors.torch import load_file, save_file

    from vitcli.model.checkpoint import read_header

    _, metadata = read_header(path)
    state = load_file(str(path))
    state.update(tensors or {})
    config = json.loads(metadata["config"])
    config.update(config_changes or {})
    save_file(state, str(out), metadata={**metadata, "config": json.dumps(config)})
    return out


def test_weights_of_the_wrong_shape_are_a_one_line_error(tmp_path, tiny_model_file):
    bad = _rewrite(tiny_model_file, tmp_path / "bad.safetensors",
                   tensors={"head.weight": torch.zeros(7, 32)})
    with pytest.raises(VitError, match="weights do not match the stored config") as info:
        load_model(bad)
    assert str(bad) in str(info.value) and "head.weight" in str(info.value)


def test_config_field_of_the_wrong_type_is_a_one_line_error(tmp_path, tiny_model_file):
    bad = _rewrite(tiny_model_file, tmp_path / "bad.safetensors", config_changes={"depth": "six"})
    with pytest.raises(VitError, match="corrupt vitcli metadata.*depth") as info:
        load_model(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("key, value, message", [
    ("class_names", "not json", "corrupt vitcli metadata"),
    ("class_names", '{"a": 1}', "class_names should be a JSON list"),
    ("class_names", '["a", "b"]', "2 class names for 3 outputs"),
    ("config", "[1, 2]", "config should be a JSON object"),
    ("config", '{"image_size": 30, "patch_size": 4}', "not divisible by patch size 4"),
    ("preprocessing", '{"mean": [0.5, 0.5]}', "mean and std need 3 values"),
    ("preprocessing", "[]", "preprocessing should be a JSON object"),
    ("preprocessing", '{"image_size": "x"}', "preprocessing field 'image_size' should be an int"),
    ("preprocessing", '{"image_size": 32, "mean": 0.5}', "field 'mean' should be a list"),
    ("preprocessing", '{"image_size": 32, "std": [0.5, 0, 0.5]}', "std values must be positive"),
    ("preprocessing", '{"image_size": 32, "interpolation": "cubic"}', "interpolation must be"),
    ("preprocessing", '{"image_size": 32, "color_mode": "CMYK"}', "color mode must be RGB or L"),
    ("preprocessing", '{"image_size": 32, "crop_fraction": 1.5}', "crop fraction must be in"),
    ("format_version", "x", "format_version 'x'"),
])
def test_corrupt_metadata_is_a_one_line_failure_naming_the_file(
        tmp_path, tiny_model_file, key, value, message):
    """Stored values that fail validation are a broken file (exit 1), not a usage error."""
    path = tmp_path / "bad.safetensors"
    _rewrite_header(path, tiny_model_file.read_bytes(),
                    lambda h: h["__metadata__"].update({key: value}))
    with pytest.raises(VitError) as info:
        load_model(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert info.value.exit_code == 1


def test_preprocessing_size_other_than_the_config_size_is_refused(tmp_path, tiny_model_file,
                                                                 tiny_model):
    """The model would resample its position embedding and predict silently wrong."""
    path = tmp_path / "bad.safetensors"
    _rewrite_header(path, tiny_model_file.read_bytes(), lambda h: h["__metadata__"].update(
        preprocessing=Preprocessing(image_size=64).to_json()))
    with pytest.raises(VitError, match="preprocessing image size 64 differs from the "
                                      "config's image size 32") as info:
        load_model(path)
    assert str(path) in str(info.value)
    with pytest.raises(VitError, match="image size 64 differs from the model's image size 32"):
        save_model(tmp_path / "new.safetensors", tiny_model,
                   preprocessing=Preprocessing(image_size=64))
    assert not (tmp_path / "new.safetensors").exists()


def test_vit_info_refuses_weights_that_do_not_match_the_config(tmp_path, tiny_model_file):
    from typer.testing import CliRunner

    from vitcli.cli import app

    bad = _rewrite(tiny_model_file, tmp_path / "bad.safetensors",
                   tensors={"head.weight": torch.zeros(7, 32)})
    result = CliRunner().invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert "do not match the stored config" in result.output
    assert CliRunner().invoke(app, ["info", str(tiny_model_file)]).exit_code == 0


def test_top_level_python_api_round_trip(tmp_path):
    """`vitcli.create_model / save_model / load_model`, as the README shows them."""
    import vitcli

    model = vitcli.create_model("vit-nano", num_classes=3, depth=1).eval()
    assert isinstance(model, vitcli.VisionTransformer) and model.config.patch_size == 4
    path = vitcli.save_model(tmp_path / "m.safetensors", model, class_names=CLASSES)
    loaded = vitcli.load_model(path)
    assert isinstance(loaded, vitcli.ModelFile) and loaded.class_names == CLASSES
    x = torch.from_numpy(loaded.preprocessing.normalize(
        np.zeros((2, 32, 32, 3), np.uint8)))  # (B, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), atol=0, rtol=0)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vitcli.nope  # noqa: B018


def test_import_vitcli_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, vitcli; vitcli.ViTConfig; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_pickle_named_safetensors_is_refused_with_a_working_conversion_hint(tmp_path):
    """`vit convert` picks its reader by suffix, so the hint renames the file to .pt first."""
    path = _zip_file(tmp_path / "weights.safetensors")
    with pytest.raises(VitError, match="never unpickles") as info:
        read_header(path)
    assert "Rename it to weights.pt" in str(info.value)
    assert f"vit convert {tmp_path / 'weights.pt'} --allow-pickle" in str(info.value)


KNOWN_KEYS_BAD = [("precision", "bf17"), ("precision", "fp32"), ("epoch", "x"), ("epoch", "0"),
                  ("val_top1", "1.5"), ("val_top1", "nan"), ("format_version", "0"),
                  ("validation", '{"source": "elsewhere"}'),
                  ("validation", '{"source": "val_split", "fraction": 2, "seed": 0}'),
                  ("validation", "[1, 2]"), ("vitcli_version", "[red]0.1"),
                  ("calibration", "x" * 2000)]


@pytest.mark.parametrize(("key", "value"), KNOWN_KEYS_BAD)
def test_a_key_vitcli_writes_is_refused_with_a_value_it_never_writes(tmp_path, tiny_model,
                                                                     key, value):
    """Every key vitcli writes is checked when read (a model file records no precision:
    it is chosen when the model runs); the error names the file and the key."""
    import re

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      extra={key: value})
    with pytest.raises(VitError, match=rf"^{re.escape(str(path))}: corrupt vitcli metadata "
                                       rf"\({key} "):
        check_model_file(path)


def test_keys_as_vitcli_writes_them_and_unknown_keys_pass_untouched(tmp_path, tiny_model):
    from vitcli.deploy.export import onnx_metadata

    extra = {"epoch": "3", "val_top1": "", "calibration": "T = 1 kept, since it did not pay",
             "validation": '{"source": "val_split", "fraction": 0.2, "seed": 1}',
             "source": "timm checkpoint vit.pt", "notes": "[red]anything at all",
             "vitcli_version": "0.2.0rc1+local.3"}
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      extra=extra)
    assert {k: check_model_file(path).metadata[k] for k in extra} == extra
    # the unknown key travels into the ONNX file's metadata; a model file's precision never
    mf = load_model(path)
    mf.metadata["precision"] = "bf17"  # as if it had got past the check
    meta = onnx_metadata(mf)
    assert meta["notes"] == "[red]anything at all" and "precision" not in meta
    for val_top1 in ("0.987500", "1.000000", "0"):
        save_model(path, tiny_model, class_names=CLASSES, extra={"val_top1": val_top1})
        check_model_file(path)


def test_every_command_refuses_a_stray_precision_in_one_line(tmp_path, tiny_model,
                                                             image_folder):
    from typer.testing import CliRunner

    from vitcli.cli import app

    path = save_model(tmp_path / "bf17.safetensors", tiny_model, class_names=CLASSES,
                      extra={"precision": "bf17"})
    runner = CliRunner()
    for args in (["info", str(path)], ["predict", str(image_folder), "-m", str(path)],
                 ["eval", "-m", str(path), "--data", str(image_folder),
                  "--out", str(tmp_path / "ev")],
                 ["export", "--onnx", "-m", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith(f"error: {path}: corrupt vitcli metadata "
                                        "(precision 'bf17'"), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "bf17.onnx").exists() and not (tmp_path / "ev").exists()
