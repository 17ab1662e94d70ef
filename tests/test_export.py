"""ONNX export: checker, parity with PyTorch, metadata round trip, int8, failure cleanup."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, TINY, make_image_folder
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.errors import VitError


def train_quickly(folder: Path, out: Path, steps: int = 40) -> Path:
    """A tiny ViT fitted for a few dozen steps on generated shapes: confident, not random.

    A random model's probabilities are near-ties, where any rounding flips the top-1; a
    fitted one is what int8 agreement means anything on.
    """
    import torch

    from vitcli.model.checkpoint import default_preprocessing, save_model
    from vitcli.model.vit import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny matmuls: threads only add sync cost on a shared machine
    model = create_model(num_classes=len(CLASSES), **TINY)
    pre = default_preprocessing(model.config)
    paths = sorted(folder.rglob("*.png"))
    x = torch.from_numpy(np.stack([pre.load(p) for p in paths]))  # (N, C, S, S)
    y = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(2)
    return save_model(out, model.eval(), class_names=CLASSES, preprocessing=pre)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """One trained tiny model exported with --int8 and --data (the expensive step, once)."""
    from vitcli.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(root / "shapes", per_class=12, seed=3)
    model = train_quickly(data, root / "model.safetensors")
    (data / "circle" / "notes.txt").write_text("drawn by hand")  # files --data skips
    (data / "square" / "zz_broken.png").write_bytes(b"not a png")
    report = export_onnx(model, root / "out" / "model.onnx", int8=True, data=data)
    return model, data, report


@pytest.mark.slow
def test_export_passes_checker_and_matches_pytorch(exported):
    import onnx
    import onnxruntime as ort

    _, _, report = exported
    onnx.checker.check_model(str(report.path), full_check=True)
    assert [p.batch for p in report.parity] == [1, 8]
    assert all(p.ok and p.max_abs_diff < 1e-4 for p in report.parity)
    batch_dim = ort.InferenceSession(str(report.path)).get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str)  # a symbolic (dynamic) batch axis
    assert not list(report.path.parent.glob("*.tmp"))


@pytest.mark.slow
def test_onnx_metadata_round_trip(exported):
    import onnx

    from vitcli.deploy.backends import open_onnx
    from vitcli.model.checkpoint import load_model

    model, _, report = exported
    original = load_model(model)
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    for key in ("format", "format_version", "config", "class_names", "preprocessing"):
        assert props[key] == original.metadata[key]
    backend = open_onnx(report.path)
    assert backend.class_names == CLASSES
    assert backend.config == original.config
    assert backend.preprocessing == original.preprocessing


@pytest.mark.slow
def test_int8_agrees_with_fp32_on_labelled_images(exported):
    _, _, report = exported
    d = report.data
    assert d is not None and d.images == 36
    from vitcli.data.discovery import skipped_words

    assert [Path(p).name for p, _ in d.bad_files] == ["notes.txt", "zz_broken.png"]
    assert skipped_words(r for _, r in d.bad_files) == \
        "1 file that is not an image and 1 unreadable image"
    assert d.agreement == 1.0 and d.onnx_accuracy == d.torch_accuracy
    assert d.torch_accuracy > 0.6  # the fitted model is better than chance (1/3)
    assert report.int8_path == report.path.with_suffix(".int8.onnx")
    assert report.int8_path.exists() and report.int8_size_bytes < report.size_bytes
    assert d.int8_agreement is not None and d.int8_agreement >= 0.85
    assert abs(d.int8_accuracy - d.onnx_accuracy) <= 0.15
    # --precision auto: no PyTorch bf16 row for a tiny model, which auto runs in fp32 on
    # any CPU (a batch of it is far below the 1 GMAC from which bf16 pays); the caption
    # says why
    assert set(report.latency_ms) == {"pytorch", "onnx fp32", "onnx int8"}
    assert not report.latency.bf16_listed and report.latency.bf16.startswith("auto: ")


@pytest.mark.slow
def test_int8_attention_is_onnxruntimes_fused_qattention(exported):
    """int8 is quantized from the fused-attention graph; the fp32 file stays standard ONNX."""
    import onnx

    _, _, report = exported
    fp32 = onnx.load(str(report.path))
    int8 = onnx.load(str(report.int8_path))
    assert {n.domain for n in fp32.graph.node} <= {"", "ai.onnx"}
    # every linear (qkv, proj, fc1, fc2 per block, and the head) is one Gemm, bias inside;
    # the last block's qkv is two (the class token's query; every token's key and value)
    assert [n.op_type for n in fp32.graph.node].count("Gemm") == 4 * 2 + 1 + 1
    kinds = [n.op_type for n in int8.graph.node]
    # one per block but the last (TINY has depth 2), which runs for the class token only
    assert kinds.count("QAttention") == 1
    assert kinds.count("Softmax") == 1  # the class token's attention in the last block
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["precision"] == "int8 dynamic (linear and fused attention weights)"
    assert report.int8_graph == "fused attention (onnxruntime QAttention)"
    # the partial contrib schema declared for the export is gone again
    assert not onnx.defs.has("Attention", "com.microsoft")


def test_export_copy_computes_what_the_model_does():
    import torch

    from vitcli.deploy.onnx_graph import (
        GemmLinear,
        HeadTokensBlock,
        PackedAttention,
        export_copy,
    )
    from vitcli.model.vit import create_model

    torch.manual_seed(0)
    model = create_model(num_classes=3, **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    plain, n = export_copy(model)
    assert n == 0 and not any(isinstance(b.attn, PackedAttention) for b in plain.blocks[:-1])
    assert all(type(m) is GemmLinear for m in plain.modules() if isinstance(m, torch.nn.Linear))
    packed, n = export_copy(model, fused_attention=True)
    assert n == 1 and isinstance(packed.blocks[0].attn, PackedAttention)
    assert isinstance(packed.blocks[-1], HeadTokensBlock)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(b.attn, PackedAttention) for b in model.blocks)  # copies
    assert type(model.head) is torch.nn.Linear
    local = create_model(num_classes=3, locality_attention=True, **TINY)
    # its masked, scaled attention keeps its own graph
    assert export_copy(local, fused_attention=True)[1] == 0


@pytest.mark.parametrize("kind", [
    {}, {"distilled": True}, {"reg_tokens": 2, "no_embed_class": True},
    {"locality_attention": True}, {"qk_norm": True}, {"init_values": 0.5},
    {"pooling": "mean"}, {"pooling": "cls_mean"}])
def test_the_last_block_runs_for_the_tokens_the_head_reads(kind: dict):
    """The export's last block computes the class (and distillation) token only, and gives
    the same logits and unknown-score features; a head reading every token keeps it whole."""
    import torch

    from vitcli.deploy.onnx_graph import HeadTokensBlock, export_copy
    from vitcli.model.ood import score_blocks
    from vitcli.model.outputs import logits_and_features
    from vitcli.model.vit import Block, create_model

    torch.manual_seed(0)
    model = create_model(num_classes=3, **{**TINY, **kind}).eval()
    for p in model.parameters():  # away from the init, so every path carries signal
        p.data.add_(0.2 * torch.randn_like(p))
    copy, _ = export_copy(model, fused_attention=True)
    shortcut = model.config.pooling == "cls"
    assert isinstance(copy.blocks[-1], HeadTokensBlock if shortcut else Block)
    x = torch.randn(3, 3, 32, 32)
    for blocks in (None, score_blocks(len(model.blocks))):  # the earlier rule's and today's
        with torch.no_grad():
            want = logits_and_features(model, x, blocks)
            got = logits_and_features(copy, x, blocks)
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_int8_falls_back_to_the_standard_graph(exported, tmp_path: Path, monkeypatch):
    import onnx

    import vitcli.deploy.onnx_graph
    from vitcli.deploy.export import export_onnx

    def unavailable(*_args, **_kwargs):
        raise TypeError("export() got an unexpected keyword argument 'custom_translation_table'")

    monkeypatch.setattr(vitcli.deploy.onnx_graph, "export_packed", unavailable)
    model, _, _ = exported
    said: list[str] = []
    report = export_onnx(model, tmp_path / "m.onnx", int8=True, log=said.append)
    assert any(line.startswith("fused attention unavailable (export() got an unexpected")
               for line in said)
    int8 = onnx.load(str(report.int8_path))
    assert "QAttention" not in [n.op_type for n in int8.graph.node]
    assert {p.key: p.value for p in int8.metadata_props}["precision"] == (
        "int8 dynamic (linear weights)")
    assert report.int8_graph.startswith("standard graph (fused attention unavailable: export()")
    assert report.int8_max_prob_diff is not None and report.int8_max_prob_diff < 0.2


def test_a_failure_without_a_message_still_falls_back(exported, tmp_path: Path, monkeypatch):
    """An exception with an empty message is still a failure, named by its type."""
    import vitcli.deploy.onnx_graph
    from vitcli.deploy.export import packed_graph

    def unavailable(*_args, **_kwargs):
        raise RuntimeError()

    monkeypatch.setattr(vitcli.deploy.onnx_graph, "export_packed", unavailable)
    from vitcli.model.checkpoint import load_model

    mf = load_model(exported[0], device="cpu")
    assert packed_graph(mf, tmp_path / "p.onnx", 20, None) == "RuntimeError"


@pytest.mark.slow
def test_mismatch_fails_and_leaves_no_file(exported, tmp_path: Path, monkeypatch):
    """A graph that disagrees with PyTorch is refused and nothing is left behind."""
    import vitcli.deploy.export as export
    import vitcli.deploy.onnx_checks as checks

    model, _, report = exported

    def wrong_graph(mf, path, opset, fixed):  # stands in for a buggy exporter
        shutil.copyfile(report.path, path)
        return "dynamo"

    real_logits = checks.torch_logits
    monkeypatch.setattr(export, "_torch_export", wrong_graph)
    monkeypatch.setattr(checks, "torch_logits", lambda mf, x: real_logits(mf, x) + 1e-2)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VitError, match="differs from PyTorch at batch 1"):
        export.export_onnx(model, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fp32_disagreement_on_data_fails(exported, monkeypatch):
    """--data: fp32 ONNX must agree with PyTorch on every image that is not a tie."""
    import vitcli.deploy.onnx_checks as checks
    from vitcli.model.checkpoint import load_model

    model, data, report = exported
    mf = load_model(model)
    labelled = checks.load_labelled(data, mf, lambda _msg: None)
    assert checks.compare_on_data(mf, report.path, labelled).agreement == 1.0
    real_logits = checks.torch_logits
    # PyTorch "answers" the next class, by a wide margin: real disagreements, not ties
    monkeypatch.setattr(checks, "torch_logits",
                        lambda mf, x: 10 * np.roll(real_logits(mf, x), 1, axis=1))
    with pytest.raises(VitError, match="disagree on 36 of 36 images"):
        checks.compare_on_data(mf, report.path, labelled)


def test_data_with_a_class_the_model_does_not_know_is_one_line(exported, tmp_path: Path):
    from vitcli.deploy.export import export_onnx

    model, _, _ = exported
    data = make_image_folder(tmp_path / "d", per_class=1, classes=["circle", "hexagon"])
    out = tmp_path / "m.onnx"
    with pytest.raises(VitError, match=r"^--data .*: class hexagon not known to the model"):
        export_onnx(model, out, data=data)
    assert not out.exists()


@pytest.mark.slow
def test_fixed_batch_export_runs_any_number_of_images(exported, tmp_path: Path):
    import onnxruntime as ort

    from vitcli.deploy.backends import open_onnx
    from vitcli.deploy.export import export_onnx
    from vitcli.deploy.onnx_checks import random_inputs, torch_logits

    model, _, _ = exported
    report = export_onnx(model, tmp_path / "fixed.onnx", batch="4", precision="fp32")
    assert set(report.latency_ms) == {"pytorch", "onnx fp32"}  # fp32 asked: no bf16 row
    assert report.latency.batch == 4 and report.latency.bf16 is None  # timed at its batch
    # batch 1 and 8 are still checked: padded to 4, and in two chunks of 4
    assert [p.batch for p in report.parity] == [1, 4, 8] and all(p.ok for p in report.parity)
    assert ort.InferenceSession(str(report.path)).get_inputs()[0].shape[0] == 4
    backend = open_onnx(report.path)
    from vitcli.model.checkpoint import load_model

    mf = load_model(model)
    x = random_inputs(mf, 5, seed=7)  # 4 + 1: the last chunk is padded
    np.testing.assert_allclose(backend.logits(x), torch_logits(mf, x), rtol=1e-3, atol=1e-4)


def test_export_command_errors_are_one_line(tmp_path: Path, tiny_model_file: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--model", str(tiny_model_file)])
    assert result.exit_code == 2 and "--onnx" in result.stderr
    result = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_file), "--batch", "x"])
    assert result.exit_code == 2 and "--batch" in result.stderr
    for opset in ("16", "999"):  # too old for LayerNormalization; unknown to onnx
        result = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_file),
                                     "--opset", opset])
        assert result.exit_code == 2 and "--opset" in result.stderr and (
            f"--opset {opset}" in result.stderr or f"[17, 1,000], not {opset}" in result.stderr)
        assert result.stderr.count("\n") == 1
    in_the_way = tmp_path / "in-the-way"
    in_the_way.write_text("a file")
    for out, code in [(tmp_path, 2), (in_the_way / "m.onnx", 1)]:
        result = runner.invoke(app, ["export", "--onnx", "-m", str(tiny_model_file),
                                     "-o", str(out)])
        assert result.exit_code == code and result.stderr.count("\n") == 1, result.stderr
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not a model at all")
    result = runner.invoke(app, ["export", "--onnx", "-m", str(fake)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and str(fake) in result.stderr


@pytest.mark.slow
def test_export_command_reports_int8_and_data(exported, tmp_path: Path):
    """The CLI path end to end, with the report printed (a fresh export of the same model)."""
    model, data, _ = exported
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", "--onnx", "-m", str(model), "-o", str(out),
                                      "--int8", "--data", str(data), "--precision", "bf16"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    # each fact whole at 80 columns ('onnx.checker full check' / 'passed' once)
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert "onnx.checker full check passed" in lines
    assert any(line.startswith("max |Δlogit| ") and line.endswith("(batch 8)") for line in lines)
    assert any(line.startswith("int8 vs fp32 on random inputs: max |Δprobability| ")
               for line in lines)
    assert "PyTorch bf16 autocast" in result.stdout and "PyTorch fp32 eager" in result.stdout
    assert "verified" in result.stdout and "ONNX int8" in result.stdout
    assert "int8 from the fused attention (onnxruntime QAttention)" in " ".join(
        result.stdout.split())
    assert out.exists() and out.with_suffix(".int8.onnx").exists()
    # skipped files in the words of every command (discovery.skipped_words), not its own
    # '2 unreadable files in the data were skipped'
    assert ("warning: skipped 1 file that is not an image and 1 unreadable image (first: "
            "circle/notes.txt: not an image file)") in " ".join(result.stderr.split())
    assert "were skipped" not in result.output


def test_export_checks_the_model_file_once(tiny_model_file: Path, tmp_path: Path, monkeypatch):
    """export ran check_model_file itself, then again inside load_model (each reading the
    header twice): one check now, whose result the loading uses."""
    import vitcli.deploy.export as export
    import vitcli.model.checkpoint as checkpoint

    headers, checks = [], []
    real_header, real_check = checkpoint.read_header, checkpoint.check_model_file
    monkeypatch.setattr(checkpoint, "read_header",
                        lambda path: headers.append(path) or real_header(path))
    monkeypatch.setattr(checkpoint, "check_model_file",
                        lambda path: checks.append(path) or real_check(path))

    class Loaded(Exception):
        """Raised where the graph would be written: the model is loaded by then."""

    def stop(mf, *_args):
        assert mf.class_names == CLASSES  # really loaded, from the checked file
        raise Loaded

    monkeypatch.setattr(export, "_torch_export", stop)
    with pytest.raises(Loaded):
        export.export_onnx(tiny_model_file, tmp_path / "m.onnx")
    assert len(checks) == 1 and len(headers) == 1
    assert [p.name for p in tmp_path.iterdir()] == [tiny_model_file.name]  # no .onnx, no temp


@pytest.mark.parametrize("damage", ["truncated", "depth"])
def test_a_corrupt_model_file_is_one_line_before_a_model_is_built(
        tiny_model_file: Path, tmp_path: Path, monkeypatch, damage: str):
    """Checked once still means checked first: nothing is allocated for a broken file."""
    import json

    import safetensors.torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(tiny_model_file.read_bytes()[:-64])
    else:  # a config with a block the weights lack
        with safe_open(str(tiny_model_file), "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta["config"] = json.dumps({**json.loads(meta["config"]), "depth": 3})
        save_file(tensors, str(bad), metadata=meta)

    def never(*_args, **_kwargs):
        raise AssertionError("the weights of a corrupt file were read")

    monkeypatch.setattr(safetensors.torch, "load_file", never)
    result = CliRunner().invoke(app, ["export", "--onnx", "-m", str(bad)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert "Traceback" not in result.output and not bad.with_suffix(".onnx").exists()


def test_latency_warm_up_lasts_until_calls_stop_getting_faster():
    """bf16 autocast builds its CPU kernels over the first calls: an export once listed
    360 ms where the steady time was 3.5. The warm-up waits until a call is no longer
    twice as fast as the one before, and the slow first calls never reach the median."""
    from vitcli.deploy import onnx_checks

    seconds = iter([0.4, 0.15, 0.05, 0.02] + [0.01] * 40)
    calls = []
    clock = [0.0]

    def run() -> None:
        calls.append(1)
        clock[0] += next(seconds)

    original = onnx_checks.time.perf_counter
    onnx_checks.time.perf_counter = lambda: clock[0]
    try:
        median = onnx_checks.median_seconds(run, runs=3)
    finally:
        onnx_checks.time.perf_counter = original
    assert median == pytest.approx(0.01)
    assert len(calls) == 6 + 3  # 0.4, 0.15, 0.05, 0.02, 0.01, 0.01 (no faster), then 3 timed


@pytest.mark.slow
def test_int8_files_precision_is_checked_and_recorded_by_predict(exported, tmp_path: Path):
    """An int8 file's `precision` is one export writes; edited to 'bf17' it is refused by
    info and predict in one line; as written, predict records int8 in its JSON."""
    import json

    from tests.test_predict import edited_onnx

    _, data, report = exported
    image = str(data / "circle" / "000.png")
    runner = CliRunner()
    assert runner.invoke(app, ["info", str(report.int8_path)]).exit_code == 0
    # what the first vitcli with --int8 wrote is still read as int8
    older = edited_onnx(report.int8_path, tmp_path / "older.onnx",
                        precision="int8 dynamic (MatMul/Gemm weights)")
    assert runner.invoke(app, ["info", str(older)]).exit_code == 0
    result = runner.invoke(app, ["predict", image, "-m", str(older), "--json"])
    assert json.loads(result.stdout)["compute_precision"] == "int8"
    result = runner.invoke(app, ["predict", image, "-m", str(report.int8_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["compute_precision"] == "int8"
    assert "precision int8 (as exported)" in " ".join(result.stderr.split())
    for asked in ("fp32", "bf16"):  # neither is what an int8 file runs: said, as for bf16
        result = runner.invoke(app, ["predict", image, "-m", str(report.int8_path),
                                     "--precision", asked])
        assert result.exit_code == 0 and (f"note: this ONNX file runs in int8, as exported; "
                                          f"--precision {asked} ignored") in result.stderr
    bad = edited_onnx(report.int8_path, tmp_path / "bf17.onnx", precision="bf17")
    for args in (["info", str(bad)], ["predict", image, "-m", str(bad)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith(f"error: {bad}: corrupt vitcli metadata (precision "
                                        "'bf17' is not a precision vitcli writes")


@pytest.mark.parametrize(("precision", "units", "preset", "batch", "listed", "why"), [
    ("auto", "AMX-BF16", "vit-ti16", 1, True, "auto: AMX-BF16, 1.3 GMAC a batch"),
    ("auto", "AMX-BF16", "vit-micro", 1, False, "0.17 GMAC a batch of 1 image; AMX-BF16 pays from 1 GMAC"),
    ("auto", "AMX-BF16", "vit-micro", 32, True, "auto: AMX-BF16, 5.3 GMAC a batch of 32 images"),
    ("auto", None, "vit-ti16", 1, False, "this CPU has no bf16 matrix units"),
    ("bf16", None, "vit-pico", 1, True, "asked for"),
    ("bf16", "AMX-BF16", "vit-pico", 1, True, "asked for"),
    ("fp32", "AMX-BF16", "vit-ti16", 1, False, None),
])
def test_latency_lists_bf16_only_where_auto_would_run_this_model_in_bf16(
        monkeypatch, precision, units, preset, batch, listed, why):
    """--precision auto: the bf16 row only when auto would run THIS model at the table's
    batch in bf16 here (devices.choose_precision), not whenever the CPU has bf16 units."""
    import vitcli.devices as devices
    from vitcli.deploy.export import bf16_reference
    from vitcli.model.presets import get_preset

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: units)
    got_listed, got_why = bf16_reference(precision, get_preset(preset).config, batch)
    assert got_listed is listed
    assert (got_why is None) if why is None else (why in got_why)


def _latency_output(capsys, monkeypatch, **kwargs) -> str:
    from vitcli.commands.export import show_latency
    from vitcli.deploy.onnx_checks import Latency

    monkeypatch.setenv("COLUMNS", "80")
    show_latency(Latency(**kwargs))
    return capsys.readouterr().out


def test_latency_table_says_speed_up_over_what_threads_and_runs(capsys, monkeypatch):
    out = _latency_output(
        capsys, monkeypatch, ms={"pytorch": 105.71, "pytorch bf16": 293.77,
                                 "onnx fp32": 24.55, "onnx int8": 15.0},
        runs={"pytorch": 20, "pytorch bf16": 7, "onnx fp32": 20, "onnx int8": 20},
        threads=2, bf16="auto: AMX-BF16, 1.3 GMAC a batch", bf16_listed=True)
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), out
    assert "speed-up over PyTorch fp32 eager" in out
    rows = {line.split("  ")[1].strip(): line.split()[-1] for line in lines
            if line.strip().startswith(("PyTorch", "ONNX"))}
    assert rows == {"PyTorch fp32 eager": "1.00×", "PyTorch bf16 autocast": "0.36×",
                    "ONNX Runtime fp32": "4.31×", "ONNX Runtime int8": "7.05×"}
    assert "median of 7-20 timed runs" in out and "2 threads for PyTorch and onnxruntime" in out
    assert "warning: PyTorch bf16 (what --precision auto picks) is slower than fp32" in out
    assert "for single images, vit predict --precision fp32 is faster" in " ".join(out.split())
    fixed = _latency_output(  # a graph fixed at batch 8 is timed at 8: not "single images"
        capsys, monkeypatch, ms={"pytorch": 10.0, "pytorch bf16": 20.0, "onnx fp32": 5.0},
        runs={"pytorch": 20, "pytorch bf16": 20, "onnx fp32": 20}, threads=1,
        bf16="asked for", bf16_listed=True, batch=8)
    assert "batch-8 latency" in fixed and "single images" not in fixed
    assert "at batch 8, vit predict --precision fp32 is faster" in " ".join(fixed.split())
    out = _latency_output(capsys, monkeypatch, ms={"pytorch": 10.0, "onnx fp32": 5.0},
                          runs={"pytorch": 20, "onnx fp32": 20}, threads=1,
                          bf16="auto: 0.0068 GMAC a batch, below the 1 GMAC from "
                               "which AMX-BF16 pays")
    assert "bf16 autocast" not in out and "median of 20 timed runs, 1 thread for" in out
    assert "no PyTorch bf16 row: --precision auto runs this model in fp32" in out
    assert all(len(line.rstrip()) <= 80 for line in out.splitlines()), out


def test_export_checks_and_times_on_the_threads_chosen(tiny_model_file, image_folder,
                                                       tmp_path, monkeypatch, ort_threads):
    """export timed PyTorch on every core whatever the load (2 cores, one busy: fp32 1,408 ms
    a call against 42 ms on 1 thread, and ONNX '25.61×' faster). Every onnxruntime session
    and every PyTorch call of its checks and timings now runs on the cores free (or
    --threads N), as the line under the latency table says; torch's count is put back after.
    --precision bf16 with --data gives bf16 its accuracy row, as it has its latency row."""
    import torch

    import vitcli.devices as devices
    from vitcli.deploy.backends import TorchBackend
    from vitcli.deploy.export import export_onnx

    sessions = ort_threads  # 3 of the 4 cores free
    calls: list[int] = []
    real_outputs = TorchBackend.outputs
    monkeypatch.setattr(TorchBackend, "outputs", lambda self, x: calls.append(
        torch.get_num_threads()) or real_outputs(self, x))
    before = torch.get_num_threads()
    report = export_onnx(tiny_model_file, tmp_path / "auto.onnx", data=image_folder)
    assert set(sessions) == {3} and set(calls) == {3} and torch.get_num_threads() == before
    assert report.latency is not None and report.data is not None
    assert (report.latency.threads, report.latency.threads_reason) == \
        (3, "3 of 4 cores free, load 1.0")
    assert report.data.bf16_accuracy is None  # auto keeps this tiny model in fp32: no row

    result = CliRunner().invoke(app, ["export", "--onnx", "-m", str(tiny_model_file), "-o",
                                      str(tmp_path / "bf16.onnx"), "--data", str(image_folder),
                                      "--precision", "bf16", "--threads", "1"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert sessions[-1] == 1 and calls[-1] == 1
    said = " ".join(result.stdout.split())
    assert "1 thread for PyTorch and onnxruntime (--threads)" in said
    bf16_row = next(line.split() for line in result.stdout.splitlines()
                    if line.strip().startswith("PyTorch bf16 ") and "%" in line)
    assert bf16_row[-3:] == ["vs", "PyTorch", "fp32"], bf16_row
    monkeypatch.setattr(devices, "thread_limit", lambda: 8)
    for bad in ("9", "5000", "-1"):  # past this machine's limit, past the option's, < 0
        result = CliRunner().invoke(app, ["export", "--onnx", "-m", str(tiny_model_file),
                                          "-o", str(tmp_path / "x.onnx"), "--threads", bad])
        assert result.exit_code == 2 and result.stderr.startswith("error:"), result.output
        assert result.stderr.count("\n") == 1 and "--threads" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_latency_times_pytorch_through_predicts_back_end(exported, monkeypatch):
    """The PyTorch rows are timed through vit predict's TorchBackend (one way to run a
    model), on the thread count the table states, given to onnxruntime too."""
    import torch

    import vitcli.deploy.onnx_checks as checks
    from vitcli.deploy.backends import TorchBackend
    from vitcli.model.checkpoint import load_model

    model, _, report = exported
    calls: list[str] = []
    real = TorchBackend.logits
    monkeypatch.setattr(TorchBackend, "logits",
                        lambda self, x: calls.append(self.compute_precision) or real(self, x))
    before = torch.get_num_threads()
    latency = checks.measure_latency(load_model(model), report.path, report.int8_path, None,
                                     runs=3, bf16=True, threads=1)
    assert set(calls) == {"fp32", "bf16"} and len(calls) >= 2 * (3 + 2)
    assert latency.threads == 1 and torch.get_num_threads() == before
    assert set(latency.ms) == {"pytorch", "pytorch bf16", "onnx fp32", "onnx int8"}
    assert all(n >= 3 for n in latency.runs.values())
    assert latency.speedup("pytorch") == 1.0
