"""Device and precision choice: the `--precision auto` rule, its CPU probe, its errors."""

from __future__ import annotations

import pytest
import torch

from vitcli.devices import (
    BF16_MIN_EMBED_DIM,
    bf16_units_from_flags,
    check_precision,
    choose_precision,
)
from vitcli.errors import UsageError

CPU = torch.device("cpu")


def test_bf16_units_are_read_from_cpu_flags():
    assert bf16_units_from_flags("fpu avx512f avx512_bf16 amx_bf16 amx_tile".split()) == "AMX-BF16"
    assert bf16_units_from_flags("fpu avx512f avx512_bf16".split()) == "AVX512-BF16"
    assert bf16_units_from_flags("fpu avx2 avx512f avx512_vnni".split()) is None


@pytest.mark.parametrize("units", ["AMX-BF16", "AVX512-BF16"])
def test_auto_picks_bf16_on_a_cpu_with_bf16_units_for_wide_models_only(units):
    wide = choose_precision("auto", CPU, embed_dim=BF16_MIN_EMBED_DIM, bf16_units=units)
    assert wide.name == "bf16" and wide.dtype is torch.bfloat16 and units in wide.reason
    narrow = choose_precision("auto", CPU, embed_dim=BF16_MIN_EMBED_DIM - 1, bf16_units=units)
    assert narrow.name == "fp32" and narrow.dtype is None and "from width 192 up" in narrow.reason


def test_auto_is_fp32_on_a_cpu_without_bf16_units_whatever_the_width():
    for width in (64, 192, 1024):
        chosen = choose_precision("auto", CPU, embed_dim=width, bf16_units=None)
        assert chosen.name == "fp32" and "no bf16" in chosen.reason


def test_explicit_precisions_are_obeyed_and_names_are_checked():
    assert choose_precision("fp32", CPU, embed_dim=768, bf16_units="AMX-BF16").name == "fp32"
    slow = choose_precision("BF16", CPU, embed_dim=32, bf16_units=None)
    assert slow.name == "bf16" and "slow" in slow.reason  # asked for: done, and said
    assert check_precision("Auto") == "auto"
    with pytest.raises(UsageError, match="--precision must be one of auto, fp32, bf16"):
        choose_precision("fp16", CPU, embed_dim=192)
    with pytest.raises(UsageError, match="MPS"):
        choose_precision("bf16", torch.device("mps"), embed_dim=192)
    assert choose_precision("auto", torch.device("mps"), embed_dim=768).name == "fp32"


def test_bf16_autocast_runs_a_vit_at_fp32_accuracy():
    """What bf16 means here: autocast around fp32 weights; top-1 agrees with fp32."""
    from vitcli.model.config import ViTConfig
    from vitcli.model.vit import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(image_size=16, patch_size=4, embed_dim=32, depth=2,
                                        num_heads=2, num_classes=5)).eval()
    x = torch.randn(64, 3, 16, 16)
    chosen = choose_precision("bf16", CPU, embed_dim=32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=chosen.dtype):
            got = model(x)
    assert got.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert (got.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.05)
