"""`vit convert`: timm, transformers, npz and pickle sources give the same logits as the source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.conftest import CLASSES, TINY
from vitcli.cli import app
from vitcli.convert import build_model, convert, download_from_hub, load_source, parse_labels
from vitcli.convert.hf import hf_to_timm
from vitcli.convert.npz import to_npz
from vitcli.errors import VitError
from vitcli.model.checkpoint import load_model, read_header
from vitcli.model.vit import VisionTransformer, create_model

runner = CliRunner()


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norms and biases too), so every weight's mapping matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_model(num_labels: int = 3):
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    cfg = HFConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, image_size=32, patch_size=8, num_labels=num_labels,
                   id2label={i: n for i, n in enumerate(CLASSES)},
                   label2id={n: i for i, n in enumerate(CLASSES)})
    return _perturb(ViTForImageClassification(cfg))


@pytest.fixture
def hf_folder(tmp_path: Path):
    """A transformers ViT saved with save_pretrained, plus a preprocessor config."""
    model = _hf_model()
    folder = tmp_path / "hf-vit"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "resample": 3,
        "size": {"height": 32, "width": 32}}))
    return folder, model


def _run(*args: str):
    return runner.invoke(app, ["convert", *map(str, args)])


# ---------------------------------------------------------------------- transformers


def test_transformers_folder_same_logits(tmp_path, hf_folder):
    folder, hf_model = hf_folder
    out = tmp_path / "converted.safetensors"
    result = _run(folder, "--out", out)
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).logits
    torch.testing.assert_close(loaded.model(x), expected, atol=1e-4, rtol=1e-4)
    assert loaded.class_names == CLASSES
    assert loaded.config.layer_norm_eps == pytest.approx(1e-12)
    assert loaded.preprocessing.mean == pytest.approx((0.5, 0.4, 0.3))
    assert loaded.preprocessing.std == pytest.approx((0.2, 0.3, 0.4))
    assert loaded.preprocessing.interpolation == "bicubic"
    assert (loaded.preprocessing.image_size, loaded.preprocessing.crop_fraction) == (32, 1.0)
    assert "transformers ViT" in loaded.metadata["source"]


@pytest.mark.parametrize("processor, expected", [
    # google/vit-base-patch16-224's legacy feature-extractor file: size is a bare int.
    ({"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
      "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224},
     ((0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)),
    # DeiT-style: resize to 256, centre-crop 224 (legacy ints, then the dict form).
    ({"crop_size": 224, "do_center_crop": True, "image_mean": [0.485, 0.456, 0.406],
      "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 256},
     ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875)),
    ({"crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
      "size": {"shortest_edge": 256}, "do_normalize": False},
     ((0.0,) * 3, (1.0,) * 3, "bilinear", 0.875)),
])
def test_transformers_preprocessor_formats(processor, expected):
    from vitcli.convert.hf import preprocessing

    pre = preprocessing(processor, 224, 3, [])
    assert pre.mean == pytest.approx(expected[0]) and pre.std == pytest.approx(expected[1])
    assert pre.interpolation == expected[2]
    assert pre.crop_fraction == pytest.approx(expected[3]) and pre.image_size == 224
    with pytest.raises(VitError, match="p.json: unexpected values"):
        preprocessing({**processor, "image_mean": "grey"}, 224, 3, [], "p.json")


def test_peer_parity_same_weights_same_outputs():
    """minGPT-style: transformers' in-memory weights in our model give its very outputs."""
    hf_model = _hf_model()
    state, _ = hf_to_timm(dict(hf_model.state_dict()))
    model = VisionTransformer(create_model(num_classes=3, **TINY).config.replace(
        layer_norm_eps=1e-12)).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = hf_model.vit(pixel_values=x).last_hidden_state  # (B, 1 + N, D), normalised
        torch.testing.assert_close(model.forward_features(x), tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x), hf_model(pixel_values=x).logits,
                                   atol=1e-4, rtol=1e-4)


def test_transformers_weights_without_config_are_refused(tmp_path, hf_folder):
    folder, _ = hf_folder
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(VitError, match="need their config.json"):
        load_source(lone)


# ---------------------------------------------------------------------------- timm


def test_timm_state_dict_round_trip_and_inference(tmp_path, tiny_model):
    _perturb(tiny_model)
    src = tmp_path / "timm.safetensors"
    save_file(tiny_model.state_dict(), str(src))  # plain timm-style file, no vitcli metadata
    result = _run(src, "--out", tmp_path / "out.safetensors", "--heads", "2",
                  "--labels", ",".join(CLASSES))
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "out.safetensors")
    assert loaded.config == tiny_model.config
    assert loaded.class_names == CLASSES
    assert loaded.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))  # ImageNet
    assert loaded.metadata["source"] == "timm state dict: timm.safetensors"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), tiny_model(x))


def test_timm_config_inference_from_shapes(tmp_path):
    # Width 192 is ViT-Ti: heads come from the paper table; no class token → mean pooling.
    model = create_model(image_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                         mlp_ratio=2.0, num_classes=0, class_token=False, pooling="mean",
                         qkv_bias=False)
    src = tmp_path / "ti.safetensors"
    save_file(model.state_dict(), str(src))
    converted = load_source(src)
    assert converted.config == model.config
    assert any("3 heads: weights do not store the head count" in n for n in converted.notes)
    assert load_source(src, heads=6).config.num_heads == 6  # --heads wins over the table


def test_timm_no_embed_class_is_read_off_the_position_embedding(tmp_path, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["pos_embed"] = state["pos_embed"][:, 1:]  # (1, 16, D): class token has no position
    src = tmp_path / "nec.safetensors"
    save_file(state, str(src))
    converted = load_source(src, heads=2)
    assert converted.config.no_embed_class and converted.state["pos_embed"].shape == (1, 16, 32)
    assert any("no_embed_class" in n for n in converted.notes)
    model = build_model(converted)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the class token without a position = with a zero one
        zero = {**tiny_model.state_dict(), "pos_embed": torch.cat(
            [torch.zeros(1, 1, 32), state["pos_embed"]], dim=1)}
        tiny_model.load_state_dict(zero)
        torch.testing.assert_close(model(x), tiny_model(x))


def test_timm_half_a_family_is_refused_not_half_loaded(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state["blocks.0.ls1.gamma"] = torch.ones(32)  # layer scale in one block of two
    save_file(state, str(tmp_path / "x.safetensors"))
    result = _run(tmp_path / "x.safetensors", "--out", tmp_path / "o.safetensors", "--heads", "2")
    assert result.exit_code == 1
    assert "missing weights for a ViT with layer scale: blocks.0.ls2.gamma" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_unknown_width_asks_for_heads(tmp_path, tiny_model):
    save_file(tiny_model.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(VitError, match="--heads"):
        load_source(tmp_path / "w.safetensors")


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["vit", "big_vision"])
def test_npz_round_trip_identical_logits(tmp_path, layout):
    model = create_model(num_classes=3, **TINY)
    if layout == "big_vision":  # big_vision's ViT: no class token, average pooling
        # (and flax's nn.gelu, the tanh approximation, as big_vision's MlpBlock applies it)
        model = create_model(num_classes=3, class_token=False, pooling="mean",
                             mlp_act="gelu_tanh", **TINY)
    _perturb(model)
    npz_path = to_npz(model, tmp_path / "vit.npz", layout=layout)
    with np.load(npz_path, allow_pickle=False) as data:
        assert ("Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel" in data.files) == (
            layout == "vit")
    path, _converted = convert(npz_path, tmp_path / "out.safetensors")
    loaded = load_model(path)
    assert loaded.config.replace(layer_norm_eps=1e-6) == model.config
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)  # the JAX release's [-1, 1] inputs
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_npz_pre_logits_drops_head(tmp_path, tiny_model):
    npz_path = to_npz(tiny_model, tmp_path / "in21k.npz")
    with np.load(npz_path) as data:
        arrays = dict(data)
    arrays["pre_logits/kernel"], arrays["pre_logits/bias"] = np.eye(32), np.zeros(32)
    np.savez(npz_path, **arrays)
    converted = load_source(npz_path)
    assert converted.config.num_classes == 0
    assert any("pre_logits" in n for n in converted.notes)


# -------------------------------------------------------------------------- pickle


class NotWeights:
    """An arbitrary object: weights_only loading must refuse to rebuild it."""


def test_pickle_refused_without_flag_with_the_model_file_message(tmp_path, tiny_model):
    pth = tmp_path / "model.pth"
    torch.save(tiny_model.state_dict(), pth)
    with pytest.raises(VitError) as from_reader:
        read_header(pth)
    result = _run(pth, "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 1
    assert f"error: {from_reader.value}" == " ".join(result.output.split())
    assert "--allow-pickle" in result.output


def test_pickle_loaded_with_flag_through_weights_only(tmp_path, tiny_model):
    pth = tmp_path / "ckpt.pth"
    wrapped = {"model": {f"module.{k}": v for k, v in tiny_model.state_dict().items()},
               "epoch": 3}
    torch.save(wrapped, pth)
    result = _run(pth, "--allow-pickle", "--heads", "2", "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 0, result.output
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path / "o.safetensors").model(x), tiny_model(x))
    torch.save({"model": tiny_model.state_dict(), "obj": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(VitError, match="refused by weights_only"):
        load_source(tmp_path / "evil.pth", allow_pickle=True, heads=2)


# ----------------------------------------------------------------------- hub, misc


def test_hub_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VitError, match="offline .*hf download .*vit convert"):
        download_from_hub("google/vit-base-patch16-224", cache_dir=tmp_path / "cache")
    result = _run("--from-hub", "google/vit-base-patch16-224", "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 1
    assert "error: cannot download google/vit-base-patch16-224: offline" in result.output


def test_hub_that_never_answers_fails_within_the_timeout(tmp_path, monkeypatch):
    """A firewall or proxy that swallows packets: one timed request, not an endless wait."""
    import socket
    import threading
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:
            pass  # the test closed the server

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    start = time.monotonic()
    try:
        with pytest.raises(VitError, match=r"unreachable \(no answer within 1 s\) and it is "
                                           r"not in the local cache; on a machine with internet run `hf download"):
            download_from_hub("google/vit-base-patch16-224", cache_dir=tmp_path / "cache",
                              timeout=1.0, endpoint=endpoint)
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert time.monotonic() - start < 10


def _fake_hub(folder: Path, repo: str):
    """A local stand-in for the Hub API: model_info, and HEAD/GET of resolve/main/FILE."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    sent: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _reply(self, data: bytes | None, head: bool = False, **headers: str) -> None:
            self.send_response(200 if data is not None else 404)
            for key, value in {**headers, "Content-Length": str(len(data or b""))}.items():
                self.send_header(key, value)
            self.end_headers()
            if data and not head:
                self.wfile.write(data)

        def _file(self, head: bool) -> None:
            name = self.path.rsplit("/", 1)[-1]
            data = files.get(name)
            if data is not None and not head:
                sent.append(name)
            self._reply(data, head, **{"X-Repo-Commit": "b" * 40,
                                       "ETag": f'"{hashlib.sha256(data or b"").hexdigest()}"'})

        def do_HEAD(self) -> None:
            self._file(head=True)

        def do_GET(self) -> None:
            if self.path.startswith(f"/api/models/{repo}"):
                info = {"id": repo, "sha": "b" * 40,
                        "siblings": [{"rfilename": name} for name in files]}
                self._reply(json.dumps(info).encode(), **{"Content-Type": "application/json"})
            else:
                self._file(head=False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", sent


def test_hub_download_fetches_only_what_it_needs_then_works_offline(tmp_path, monkeypatch,
                                                                    hf_folder):
    from huggingface_hub import constants

    folder, hf_model = hf_folder
    (folder / "pytorch_model.bin").write_bytes(b"\x80 a pickle nobody should fetch")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server, endpoint, sent = _fake_hub(folder, "someone/tiny-vit")
    try:
        local = download_from_hub("someone/tiny-vit", cache_dir=tmp_path / "cache",
                                  endpoint=endpoint)
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(sent) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    path, _ = convert(local, tmp_path / "out.safetensors", source_name="someone/tiny-vit")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path).model(x), hf_model(pixel_values=x).logits,
                                   atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # later, offline: the cache serves
    assert download_from_hub("someone/tiny-vit", cache_dir=tmp_path / "cache") == local


def test_hub_cache_is_used_when_offline(tmp_path, monkeypatch, hf_folder):
    """A model fetched once converts again offline, straight from the Hub cache."""
    folder, hf_model = hf_folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "cache" / "models--someone--tiny-vit"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    assert download_from_hub("someone/tiny-vit", cache_dir=tmp_path / "cache") == snapshot
    (snapshot / "model.safetensors").unlink()  # incomplete: the clear error, not a half model
    with pytest.raises(VitError, match="not in the local cache"):
        download_from_hub("someone/tiny-vit", cache_dir=tmp_path / "cache")


def test_hub_file_choice():
    from vitcli.convert.hub import _wanted

    files = {"config.json", "preprocessor_config.json", "model.safetensors",
             "pytorch_model.bin", "tf_model.h5", "README.md"}
    assert _wanted(files, "x/y", "fix") == ["config.json", "preprocessor_config.json",
                                             "model.safetensors"]
    sharded = {"config.json", "model.safetensors.index.json",
               "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"}
    assert _wanted(sharded, "x/y", "fix") == [
        "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors"]
    with pytest.raises(VitError, match="no model.safetensors on the Hub .*--allow-pickle"):
        _wanted({"config.json", "pytorch_model.bin"}, "x/y", "fix")


def test_labels_and_usage_errors(tmp_path, tiny_model, tiny_model_file):
    (tmp_path / "labels.txt").write_text("a\nb\n\nc\n")
    assert parse_labels(str(tmp_path / "labels.txt")) == ["a", "b", "c"]
    assert parse_labels("x, y") == ["x", "y"]
    (tmp_path / "list.json").write_text('["a", "b", "c"]')
    (tmp_path / "id2label.json").write_text('{"10": "k", "2": "c", "0": "a"}')
    assert parse_labels(str(tmp_path / "list.json")) == ["a", "b", "c"]
    assert parse_labels(str(tmp_path / "id2label.json")) == ["a", "c", "k"]  # by id
    save_file(tiny_model.state_dict(), str(tmp_path / "t.safetensors"))
    (tmp_path / "bad.json").write_text("{oops")
    result = _run(tmp_path / "t.safetensors", "--heads", "2", "--labels", tmp_path / "bad.json",
                  "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 2 and "not a readable label file" in result.output
    assert "Traceback" not in result.output
    result = _run(tmp_path / "t.safetensors", "--heads", "2", "--labels", "a,b",
                  "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 2 and "2 labels given for a model with 3 classes" in result.output
    result = _run(tiny_model_file, "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 2 and "already a vitcli model file" in result.output
    assert _run("--out", tmp_path / "o.safetensors").exit_code == 2  # neither source nor hub


def test_out_never_replaces_the_source(tmp_path, tiny_model, hf_folder):
    src = tmp_path / "timm.safetensors"
    save_file(tiny_model.state_dict(), str(src))
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "timm.safetensors"):
        result = _run(src, "--heads", "2", "--out", out)
        assert result.exit_code == 2 and "would overwrite the checkpoint" in result.output
    folder, _ = hf_folder
    weights = (folder / "model.safetensors").read_bytes()
    result = _run(folder, "--out", folder / "model.safetensors")
    assert result.exit_code == 2 and "would overwrite" in result.output
    result = _run(src, "--heads", "2", "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output
    assert src.read_bytes() == before and (folder / "model.safetensors").read_bytes() == weights
    # Beside the source under another name is fine, and no temporary file is left behind.
    assert _run(folder, "--out", folder / "vitcli.safetensors").exit_code == 0
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    (tmp_path / "empty").mkdir()
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(tmp_path / "resnet.safetensors"))
    cases = {
        tmp_path / "missing.safetensors": "no such file or folder",
        tmp_path / "garbage.npz": "not an .npz file",
        tmp_path / "other.npz": "no embedding/kernel; not a ViT .npz checkpoint",
        tmp_path / "empty": "no model.safetensors (or pytorch_model.bin) in this folder",
        tmp_path / "resnet.safetensors": "neither timm's ViT names",
    }
    for source, message in cases.items():
        result = _run(source, "--out", tmp_path / "o.safetensors")
        assert result.exit_code == 1, (source, result.output)
        assert result.output.startswith(f"error: {source}") and message in result.output
        assert len(result.output.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "o.safetensors").exists()


def test_timm_hub_folder_takes_pretrained_cfg_and_labels(tmp_path, tiny_model):
    folder = tmp_path / "vit_tiny.timm"
    folder.mkdir()
    _perturb(tiny_model)
    save_file(tiny_model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny", "num_classes": 3, "global_pool": "token",
        "label_names": CLASSES, "pretrained_cfg": {
            "input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 0.9,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    path, converted = convert(folder, tmp_path / "out.safetensors", heads=2)
    loaded = load_model(path)
    pre = loaded.preprocessing
    assert (pre.mean, pre.std, pre.interpolation, pre.crop_fraction) == (
        (0.5,) * 3, (0.25,) * 3, "bilinear", 0.9)
    assert loaded.class_names == CLASSES and loaded.config.pooling == "cls"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), tiny_model(x))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny",
                                                    "global_pool": "avgmax"}))
    with pytest.raises(VitError, match="global_pool 'avgmax' is not supported"):
        load_source(folder, heads=2)
