"""Device, precision and thread choice: the `--precision auto` rule, its CPU probe, its
errors; the CPU threads every command starts from."""

from __future__ import annotations

import pytest
import torch

from vitcli.devices import (
    BF16_MIN_MACS,
    bf16_units_from_flags,
    bf16_weights,
    check_precision,
    check_threads,
    choose_precision,
    choose_threads,
    gmac,
    torch_threads,
)
from vitcli.errors import UsageError

CPU = torch.device("cpu")


def test_bf16_units_are_read_from_cpu_flags():
    assert bf16_units_from_flags("fpu avx512f avx512_bf16 amx_bf16 amx_tile".split()) == "AMX-BF16"
    assert bf16_units_from_flags("fpu avx512f avx512_bf16".split()) == "AVX512-BF16"
    assert bf16_units_from_flags("fpu avx2 avx512f avx512_vnni".split()) is None


@pytest.mark.parametrize("units", ["AMX-BF16", "AVX512-BF16"])
def test_auto_picks_bf16_on_a_cpu_with_bf16_units_for_big_enough_batches_only(units):
    big = choose_precision("auto", CPU, macs=BF16_MIN_MACS, bf16_units=units)
    assert big.name == "bf16" and big.dtype is torch.bfloat16
    assert big.reason == f"auto: {units}, 1 GMAC a batch"
    assert choose_precision("auto", CPU, macs=BF16_MIN_MACS - 1, bf16_units=units).name == "fp32"
    small = choose_precision("auto", CPU, macs=BF16_MIN_MACS // 2, bf16_units=units)
    assert small.name == "fp32" and small.dtype is None
    assert small.reason == f"auto: 0.5 GMAC a batch; {units} pays from 1 GMAC"
    step = choose_precision("auto", CPU, macs=5 * BF16_MIN_MACS, call="training step",
                            bf16_units=units)
    assert step.reason == f"auto: {units}, 5 GMAC a training step"


@pytest.mark.parametrize(("preset", "batch", "training", "name"), [
    # measured on 2 AMX cores (docs/precision.md): bf16 slower at the fp32 rows, faster at
    # the bf16 ones
    ("vit-ti16", 1, False, "bf16"),  # 1.25 GMAC: 1.3-1.5x
    ("vit-micro", 1, False, "fp32"),  # 0.17 GMAC: 0.75-0.87x
    ("vit-micro", 8, False, "bf16"),  # 1.3 GMAC: 1.4x
    ("vit-pico", 64, False, "fp32"),  # 0.55 GMAC (the 5×5-grid vit-pico: 0.44, 0.94x)
    ("vit-pico", 32, True, "fp32"),  # 0.42 GMAC a step (5×5 grid: 0.66, 0.86x)
    ("vit-pico", 256, True, "bf16"),  # 3.3 GMAC a step (5×5 grid: 5.3, 1.2x)
])
def test_auto_follows_the_measured_work_per_call(preset, batch, training, name):
    from vitcli.model.config import call_macs
    from vitcli.model.presets import get_preset

    config = get_preset(preset).config
    macs = call_macs(config, batch, training=training)
    assert choose_precision("auto", CPU, macs=macs, bf16_units="AMX-BF16").name == name


def test_gmac_reads_at_every_size():
    assert [gmac(m) for m in (6_838_240, 1_253_683_200, 17_563_828_224 * 3)] == \
        ["0.0068", "1.3", "53"]
    # a toy model's batch of 1: never exponent notation ("5e-05 GMAC a batch")
    assert [gmac(m) for m in (50_000, 123_456, 99_000, 0, 10**9, 500_000_000, 9_960_000_000)] \
        == ["0.00005", "0.00012", "0.000099", "0", "1", "0.5", "10"]


def test_auto_is_fp32_on_a_cpu_without_bf16_units_whatever_the_work():
    for macs in (10**6, 10**9, 10**12):
        chosen = choose_precision("auto", CPU, macs=macs, bf16_units=None)
        assert chosen.name == "fp32" and "no bf16" in chosen.reason


def test_explicit_precisions_are_obeyed_and_names_are_checked():
    assert choose_precision("fp32", CPU, macs=10**12, bf16_units="AMX-BF16").name == "fp32"
    slow = choose_precision("BF16", CPU, macs=10**6, bf16_units=None)
    assert slow.name == "bf16" and "slow" in slow.reason  # asked for: done, and said
    assert check_precision("Auto") == "auto"
    with pytest.raises(UsageError, match="--precision must be one of auto, fp32, bf16"):
        choose_precision("fp16", CPU, macs=10**9)
    with pytest.raises(UsageError, match="MPS"):
        choose_precision("bf16", torch.device("mps"), macs=10**9)
    assert choose_precision("auto", torch.device("mps"), macs=10**12).name == "fp32"


def test_bf16_autocast_runs_a_vit_at_fp32_accuracy():
    """What bf16 means here: autocast around fp32 weights; top-1 agrees with fp32."""
    from vitcli.model.config import ViTConfig
    from vitcli.model.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2,
                                        num_heads=2, num_classes=5)).eval()
    x = torch.randn(64, 3, 16, 16)
    chosen = choose_precision("bf16", CPU, macs=10**6)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=chosen.dtype):
            got = model(x)
    assert got.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert (got.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.05)


def test_bf16_weights_give_autocasts_answers_bit_for_bit_and_leave_norms_fp32():
    """Stored in bf16, the matrix weights are what autocast casts them to at every call."""
    import copy

    from vitcli.model.config import ViTConfig
    from vitcli.model.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2,
                                        num_heads=2, num_classes=5)).eval()
    stored = bf16_weights(copy.deepcopy(model))
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), stored(x))
    dtypes = {name: p.dtype for name, p in stored.named_parameters()}
    assert dtypes["blocks.0.attn.qkv.weight"] == torch.bfloat16
    assert dtypes["blocks.0.norm1.weight"] == torch.float32
    assert dtypes["pos_embed"] == torch.float32 and dtypes["cls_token"] == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched


def test_bf16_copy_makes_only_the_bf16_matrices_and_shares_the_rest():
    """`vit predict`'s bf16 copy deep-copied the fp32 model first (a second fp32 model at
    the peak, 1.2 GB for ViT-L/16) and kept fp32 copies of the norms and tokens; the copy
    now makes only the bf16 matrices and shares the rest, and answers as autocast does."""
    from vitcli.devices import bf16_copy
    from vitcli.model.config import ViTConfig
    from vitcli.model.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2,
                                        num_heads=2, num_classes=5)).eval()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    copied = bf16_copy(model)
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), copied(x))
    matrices = {f"{layer}.{kind}" for layer, m in copied.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for kind in ("weight", "bias")}
    original = dict(model.named_parameters())
    assert "blocks.0.attn.qkv.weight" in matrices and "patch_embed.proj.weight" in matrices
    for name, p in copied.named_parameters():
        if name in matrices:
            assert p.dtype == torch.bfloat16 and original[name].dtype == torch.float32, name
        else:  # norms, class token, position embedding: the original's own tensors
            assert p is original[name], name
    for name, tensor in model.state_dict().items():  # the original is untouched
        assert tensor.dtype == torch.float32 and torch.equal(tensor, before[name]), name


def test_threads_are_the_cores_free_unless_given(monkeypatch):
    """eval, predict and export ran on every core whatever the load; they now start from the
    guess train starts from: usable cores less the load average, at least 1."""
    import vitcli.devices as devices

    monkeypatch.setattr(devices, "usable_cores", lambda: 4)
    monkeypatch.setattr(devices, "load_average", lambda: 1.0)
    assert choose_threads() == devices.Threads(3, "3 of 4 cores free, load 1.0")
    assert str(choose_threads()) == "3 threads (3 of 4 cores free, load 1.0)"
    monkeypatch.setattr(devices, "load_average", lambda: 9.0)
    assert choose_threads().count == 1  # never below one
    monkeypatch.setattr(devices, "load_average", lambda: None)  # no load average here
    assert choose_threads() == devices.Threads(4, "4 of 4 cores free")
    assert choose_threads(2) == devices.Threads(2, "--threads")


def test_threads_out_of_range_are_one_usage_error(monkeypatch):
    import vitcli.devices as devices

    monkeypatch.setattr(devices, "thread_limit", lambda: 8)
    assert check_threads(0) == 0 and check_threads(8) == 8
    for bad, said in ((-1, r"--threads must be 0 or more, not -1"),
                      (9, r"--threads 9 is more than this machine's \d+ CPUs? can use: at "
                          r"most 8 \(4 a CPU\)")):
        with pytest.raises(UsageError, match=said) as err:
            choose_threads(bad)
        assert err.value.exit_code == 2


def test_torch_threads_sets_the_count_for_the_block_and_puts_it_back():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: as they are
        assert torch.get_num_threads() == before
