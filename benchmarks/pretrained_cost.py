"""What each pretrained family costs on this CPU: forward-pass time per image, one run.

    python benchmarks/pretrained_cost.py              # the catalog's families at their sizes
    python benchmarks/pretrained_cost.py --quick      # toy sizes (the smoke test)

Each family is vitcli's ViT with that family's architecture (width, depth, heads, patch,
resolution, and its tokens and head: registers, distillation token, MAP head, norm_pre,
layer scale) and random weights: the time of a forward pass does not depend on the weights.
Models run in eval mode without gradients at batch `--batch` (a folder of photos: `vit
predict`, `vit eval`, a linear probe's one feature pass over the training images), in
float32 and, where the CPU has bf16 matrix units, under bf16 autocast (what
`--precision auto` picks there), best of `--repeats` after a warm-up. A linear probe on N
images costs about N × that time for its one feature pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name → (catalog short name, config fields): the architectures of vit models --pretrained.
FAMILIES = {
    "DINOv2 ViT-S/14": ("dinov2-s", dict(image_size=224, patch_size=14, embed_dim=384, depth=12,
                                         num_heads=6, init_values=1e-5, num_classes=0)),
    "DINOv2 ViT-B/14": ("dinov2-b", dict(image_size=224, patch_size=14, embed_dim=768, depth=12,
                                         num_heads=12, init_values=1e-5, num_classes=0)),
    "DINOv2+reg ViT-B/14": ("dinov2-b-reg", dict(
        image_size=224, patch_size=14, embed_dim=768, depth=12, num_heads=12, init_values=1e-5,
        reg_tokens=4, no_embed_class=True, num_classes=0)),
    "CLIP ViT-B/16": ("clip-b16", dict(image_size=224, patch_size=16, embed_dim=768, depth=12,
                                       num_heads=12, pre_norm=True, patch_bias=False,
                                       mlp_act="quick_gelu", layer_norm_eps=1e-5,
                                       num_classes=0)),
    "SigLIP ViT-B/16": ("siglip-b16", dict(image_size=224, patch_size=16, embed_dim=768,
                                           depth=12, num_heads=12, class_token=False,
                                           pooling="map", mlp_act="gelu_tanh", num_classes=0)),
    "DeiT-S distilled": ("deit-s-distilled", dict(image_size=224, patch_size=16, embed_dim=384,
                                                  depth=12, num_heads=6, distilled=True,
                                                  num_classes=1000)),
    "ViT-S/16 AugReg": ("vit-s16-augreg", dict(image_size=224, patch_size=16, embed_dim=384,
                                               depth=12, num_heads=6, num_classes=1000)),
    "ViT-B/16 AugReg": ("vit-b16-augreg", dict(image_size=224, patch_size=16, embed_dim=768,
                                               depth=12, num_heads=12, num_classes=1000)),
}


def measure(fields: dict, batch: int, repeats: int, bf16: bool = False) -> float:
    """Best seconds per image of a forward pass at this batch size (bf16: under bf16
    autocast, as `--precision auto` runs on a CPU with bf16 matrix units)."""
    import torch

    from vitcli.model.config import ViTConfig
    from vitcli.model.vit import VisionTransformer

    model = VisionTransformer(ViTConfig(**fields)).eval()
    x = torch.randn(batch, 3, fields["image_size"], fields["image_size"])
    best = float("inf")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up: first-call allocations and kernel choice
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best / batch


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="toy sizes, one family")
    parser.add_argument("--only", nargs="*", default=None,
                        help="catalog names to measure (default: all families)")
    parser.add_argument("--no-bf16", action="store_true", help="float32 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = {label: v for label, v in FAMILIES.items()
                if args.only is None or v[0] in args.only}
    if args.quick:
        families = {"toy DINOv2": ("dinov2-s", dict(image_size=28, patch_size=14, embed_dim=32,
                                                     depth=2, num_heads=2, init_values=1e-5,
                                                     num_classes=0))}
        args.repeats = 1
    from vitcli.errors import plural
    from vitcli.model.config import ViTConfig, count_params, gflops

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() \
        else "CPU"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{cpu}, {plural(args.threads, 'thread')}, torch {torch.__version__}, float32; "
          f"load {load}")
    from vitcli.devices import cpu_bf16_units

    bf16 = bool(cpu_bf16_units()) and not args.no_bf16
    batch = args.batch if not args.quick else 2
    print(f"ms per image, forward pass only, batches of {batch}"
          + ("; bf16: under bf16 autocast (vitcli's --precision auto on this CPU)" if bf16
             else ""))
    print(f"{'family':<21}{'name':<17}{'px':>4}{'M':>6}{'GFLOPs':>7}{'fp32':>8}"
          + (f"{'bf16':>8}" if bf16 else ""))
    for label, (name, fields) in families.items():
        config = ViTConfig(**fields)
        row = (f"{label:<21}{name:<17}{config.image_size:>4}{count_params(config) / 1e6:>6.1f}"
               f"{gflops(config):>7.1f}{measure(fields, batch, args.repeats) * 1e3:>8.0f}")
        if bf16:
            row += f"{measure(fields, batch, args.repeats, bf16=True) * 1e3:>8.0f}"
        print(row, flush=True)

if __name__ == "__main__":
    main()
