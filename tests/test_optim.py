"""Parameter groups, the warm-up + cosine schedule, and the EMA (vitcli/training/optim.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import TINY

from vitcli.errors import UsageError
from vitcli.model.vit import create_model
from vitcli.training.optim import ModelEma, WarmupDecay, build_optimizer, layer_id, param_groups


def _groups_by_name(model, **kw):
    return {name: g for g in param_groups(model, **kw) for name in g["names"]}


def test_no_decay_on_norms_biases_class_token_and_position_embedding():
    model = create_model(num_classes=3, **TINY)
    groups = _groups_by_name(model, weight_decay=0.05)
    assert set(groups) == {n for n, _ in model.named_parameters()}
    no_decay = {n for n, g in groups.items() if g["weight_decay"] == 0.0}
    decay = {n for n, g in groups.items() if g["weight_decay"] == 0.05}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias",
            "blocks.0.norm1.weight", "blocks.1.attn.qkv.bias"} <= no_decay
    assert {"head.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight",
            "patch_embed.proj.weight"} <= decay
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 for n in decay)
    assert not any("norm" in n or n.endswith("bias") for n in decay)


def test_layer_decay_scales_lr_by_depth_and_frozen_weights_are_left_out():
    model = create_model(num_classes=3, **TINY)  # depth 2: layers 0 (embed), 1, 2, 3 (head)
    groups = _groups_by_name(model, weight_decay=0.05, layer_decay=0.5)
    assert groups["head.weight"]["lr_scale"] == 1.0
    assert groups["blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert groups["blocks.0.mlp.fc1.weight"]["lr_scale"] == 0.25
    assert groups["pos_embed"]["lr_scale"] == groups["patch_embed.proj.weight"]["lr_scale"] \
        == 0.125
    assert layer_id("blocks.1.attn.proj.weight", 2) == 2 and layer_id("norm.weight", 2) == 3

    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))
    assert set(_groups_by_name(model, weight_decay=0.05)) == {"head.weight", "head.bias"}
    with pytest.raises(UsageError, match="layer-decay"):
        param_groups(model, weight_decay=0.05, layer_decay=1.5)


def test_optimizer_groups_carry_the_scheduled_lr_times_their_scale():
    model = create_model(num_classes=3, **TINY)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    schedule = WarmupDecay(peak_lr=1e-3, warmup_steps=4, total_steps=20)
    lr = schedule.apply(opt, 1)
    assert lr == pytest.approx(1e-3 * 2 / 4)
    assert sorted({round(g["lr"] / lr, 6) for g in opt.param_groups}) == [0.125, 0.25, 0.5, 1.0]


def test_warmup_then_cosine_values():
    s = WarmupDecay(peak_lr=1.0, warmup_steps=10, total_steps=110, min_ratio=0.01)
    assert [s.lr(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s.lr(10) == pytest.approx(1.0)  # cosine starts at the peak
    assert s.lr(60) == pytest.approx(0.01 + 0.99 * 0.5)  # half way down
    assert s.lr(35) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s.lr(110) == pytest.approx(0.01) and s.lr(500) == pytest.approx(0.01)
    lrs = [s.lr(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # never rises after warm-up
    assert WarmupDecay.from_dict(s.to_dict()) == s
    assert WarmupDecay(1.0, 0, 10).lr(0) == pytest.approx(1.0)  # no warm-up
    old = s.to_dict()
    del old["shape"]  # a state saved before the linear schedule existed
    assert WarmupDecay.from_dict(old) == s


def test_warmup_then_linear_values():
    s = WarmupDecay(peak_lr=1.0, warmup_steps=10, total_steps=110, min_ratio=0.01, shape="linear")
    assert [s.lr(i) for i in (0, 9, 10)] == pytest.approx([0.1, 1.0, 1.0])  # same warm-up
    assert s.lr(35) == pytest.approx(0.01 + 0.99 * 0.75)  # a quarter of the way down
    assert s.lr(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.lr(110) == pytest.approx(0.01) and s.lr(500) == pytest.approx(0.01)
    steps = [s.lr(i) - s.lr(i + 1) for i in range(10, 110)]
    assert steps == pytest.approx([0.99 / 100] * 100)  # equal steps down: a straight line
    assert WarmupDecay.from_dict(s.to_dict()) == s


def test_ema_moves_towards_the_weights_and_ignores_frozen_copies():
    model = create_model(num_classes=3, **TINY)
    ema = ModelEma(model, decay=0.9)
    start = ema.module.head.weight.clone()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    assert torch.allclose(ema.module.head.weight, expected, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module.head.weight, model.head.weight, atol=1e-5)


# ------------------------------------------------------------------------------ Muon

needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"),
                                reason="torch.optim.Muon arrived in torch 2.9")


def _names_of(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


@needs_muon
def test_muon_takes_the_blocks_matrices_and_adamw_keeps_the_rest():
    model = create_model(num_classes=3, **TINY)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, kind="muon")
    adamw, muon = opt.parts
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = _names_of(model, [p for g in muon.param_groups for p in g["params"]])
    in_adamw = _names_of(model, [p for g in adamw.param_groups for p in g["params"]])
    assert in_muon == {n for n, p in model.named_parameters()
                       if n.startswith("blocks.") and p.ndim == 2}
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"} <= in_muon
    assert not in_muon & in_adamw
    assert in_muon | in_adamw == {n for n, _ in model.named_parameters()}
    assert {"patch_embed.proj.weight", "head.weight", "cls_token", "pos_embed"} <= in_adamw
    assert all(g["weight_decay"] == 0.05 for g in muon.param_groups)
    # --weight-decay 0 changes the decay, not which parameters Muon trains
    no_decay = build_optimizer(model, lr=1e-3, weight_decay=0.0, kind="muon").parts[1]
    assert _names_of(model, [p for g in no_decay.param_groups for p in g["params"]]) == in_muon


@needs_muon
def test_the_schedule_sets_muon_groups_too_with_their_layer_decay_scale():
    model = create_model(num_classes=3, **TINY)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, kind="muon")
    lr = WarmupDecay(peak_lr=1e-3, warmup_steps=4, total_steps=20).apply(opt, 1)
    muon_scales = sorted(round(g["lr"] / lr, 6) for g in opt.parts[1].param_groups)
    assert muon_scales == [0.25, 0.5]  # blocks 0 and 1 of a depth-2 model


@needs_muon
def test_muon_state_survives_the_run_folder_format_and_continues_identically():
    import json

    from vitcli.training.runs import flatten_optimizer, unflatten_optimizer

    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])

    def step(model, opt):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    a = create_model(num_classes=3, **TINY)
    b = create_model(num_classes=3, **TINY)
    opt_a = build_optimizer(a, lr=1e-2, weight_decay=0.05, kind="muon")
    for _ in range(2):
        step(a, opt_a)
    info, tensors = flatten_optimizer(opt_a.state_dict())
    info = json.loads(json.dumps(info))  # what state.json holds
    tensors = {k: v.clone() for k, v in tensors.items()}  # a file's copy, not opt_a's own
    assert any(k.endswith(".momentum_buffer") for k in tensors)  # Muon's state is saved
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, lr=1e-2, weight_decay=0.05, kind="muon")
    opt_b.load_state_dict(unflatten_optimizer(info, tensors))
    step(a, opt_a)
    step(b, opt_b)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_muon_on_a_torch_without_it_and_unknown_optimizers_are_one_line(monkeypatch):
    model = create_model(num_classes=3, **TINY)
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(UsageError, match="needs torch 2.9 or newer"):
        build_optimizer(model, lr=1e-3, weight_decay=0.05, kind="muon")
    with pytest.raises(UsageError, match="must be adamw or muon, not .sgd."):
        build_optimizer(model, lr=1e-3, weight_decay=0.05, kind="sgd")
