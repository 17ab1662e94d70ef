"""vitcli's ViT against Hugging Face transformers' ViT: same architecture, same weights, same run.

    python benchmarks/model_speed.py                      # ViT-Ti/16 @ 224 and vit-nano @ 32
    python benchmarks/model_speed.py --batch 16 --threads 2 --repeats 7

For each model the peer (`ViTForImageClassification`, SDPA attention) gets our weights copied
in, so both compute the same function (the max logit difference is printed as a check). Then,
with the same torch threads and the same input batch, each is warmed up and timed several
times, ours and the peer's runs interleaved so that load from other processes hits both
alike. Reported: median images/s for inference (no_grad, eval) and for a training step
(forward + cross-entropy + backward + AdamW step), and the ratio ours / peer (≥ 1 is good).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from vitcli.model.config import ViTConfig
from vitcli.model.presets import get_preset
from vitcli.model.vit import VisionTransformer

CASES = [("vit-ti16", 224, 8), ("vit-nano", 32, 64)]  # preset, image size, default batch


def hf_peer(config: ViTConfig) -> nn.Module:
    """The same architecture as a transformers ViTForImageClassification."""
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    hf = HFConfig(
        hidden_size=config.embed_dim, num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
        image_size=config.image_size, patch_size=config.patch_size,
        num_channels=config.in_channels, num_labels=config.num_classes,
        qkv_bias=config.qkv_bias, layer_norm_eps=config.layer_norm_eps, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    return ViTForImageClassification(hf)


# Our (timm) block names → transformers' names, for transformers 5 and 4 layouts.
HF_BLOCK_NAMES = {
    5: {"q": "vit.layers.{i}.attention.q_proj", "k": "vit.layers.{i}.attention.k_proj",
        "v": "vit.layers.{i}.attention.v_proj", "attn.proj": "vit.layers.{i}.attention.o_proj",
        "norm1": "vit.layers.{i}.layernorm_before", "norm2": "vit.layers.{i}.layernorm_after",
        "mlp.fc1": "vit.layers.{i}.mlp.fc1", "mlp.fc2": "vit.layers.{i}.mlp.fc2"},
    4: {"q": "vit.encoder.layer.{i}.attention.attention.query",
        "k": "vit.encoder.layer.{i}.attention.attention.key",
        "v": "vit.encoder.layer.{i}.attention.attention.value",
        "attn.proj": "vit.encoder.layer.{i}.attention.output.dense",
        "norm1": "vit.encoder.layer.{i}.layernorm_before",
        "norm2": "vit.encoder.layer.{i}.layernorm_after",
        "mlp.fc1": "vit.encoder.layer.{i}.intermediate.dense",
        "mlp.fc2": "vit.encoder.layer.{i}.output.dense"},
}


@torch.no_grad()
def copy_weights(ours: VisionTransformer, peer: nn.Module) -> None:
    """Load our timm-named weights into the HF model (q, k, v split from the fused qkv)."""
    src = ours.state_dict()
    dst = peer.state_dict()
    names = HF_BLOCK_NAMES[5 if "vit.layers.0.attention.q_proj.weight" in dst else 4]
    out = {
        "vit.embeddings.cls_token": src["cls_token"],
        "vit.embeddings.position_embeddings": src["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
        "vit.layernorm.weight": src["norm.weight"], "vit.layernorm.bias": src["norm.bias"],
        "classifier.weight": src["head.weight"], "classifier.bias": src["head.bias"],
    }
    for i in range(len(ours.blocks)):
        for kind in ("weight", "bias"):
            qkv = src[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)  # rows: q | k | v
            for part, tensor in zip("qkv", qkv):
                out[f"{names[part].format(i=i)}.{kind}"] = tensor
            for ours_name in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{names[ours_name].format(i=i)}.{kind}"] = src[f"blocks.{i}.{ours_name}.{kind}"]
    missing = set(dst) - set(out)
    if missing:
        raise RuntimeError(f"peer weights not mapped: {sorted(missing)[:5]}")
    peer.load_state_dict(out)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def inference_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode():
            logits_of(model, x)
    return step


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = nn.functional.cross_entropy(logits_of(model, x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def race(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call for each step, runs interleaved (A, B, A, B, ...)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(preset: str, size: int, batch: int, repeats: int) -> list[tuple[str, float, float]]:
    """(mode, ours images/s, peer images/s) for one architecture."""
    config = get_preset(preset).config.replace(image_size=size)
    torch.manual_seed(0)
    ours = VisionTransformer(config)
    peer = hf_peer(config)
    copy_weights(ours, peer)
    x = torch.randn(batch, config.in_channels, size, size)
    y = torch.randint(0, config.num_classes, (batch,))
    ours.eval(), peer.eval()
    with torch.no_grad():
        diff = (logits_of(ours, x) - logits_of(peer, x)).abs().max().item()
    print(f"{preset} @ {size}px, batch {batch}: max |logits ours - peer| = {diff:.2e}")
    rows = []
    seconds = race({"ours": inference_step(ours, x), "peer": inference_step(peer, x)}, repeats)
    rows.append(("inference", batch / seconds["ours"], batch / seconds["peer"]))
    ours.train(), peer.train()
    seconds = race({"ours": training_step(ours, x, y), "peer": training_step(peer, x, y)},
                   repeats)
    rows.append(("train step", batch / seconds["ours"], batch / seconds["peer"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None,
                        help="images per batch (default: 8 for Ti/16, 64 for nano)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model and mode")
    parser.add_argument("--only", choices=[c[0] for c in CASES], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{args.threads} threads, median of {args.repeats} interleaved runs\n")
    results = []
    for preset, size, default_batch in CASES:
        if args.only in (None, preset):
            batch = args.batch or default_batch
            results += [(preset, size, *row) for row in bench(preset, size, batch, args.repeats)]
    print(f"\n{'model':<16}{'mode':<12}{'ours img/s':>12}{'HF img/s':>12}{'ours/HF':>9}")
    for preset, size, mode, ours, peer in results:
        print(f"{preset + f' @{size}':<16}{mode:<12}{ours:>12.1f}{peer:>12.1f}{ours / peer:>8.2f}×")


if __name__ == "__main__":
    main()
