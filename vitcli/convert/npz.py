"""The original JAX ViT and big_vision `.npz` checkpoints ↔ timm's layout.

Flax stores a Dense kernel as (in, out) (ours is (out, in)), a convolution as HWIO (ours is
OIHW), and attention kernels with the heads as their own axis: query/key/value (D, heads, hd),
out (heads, hd, D). Head h, dimension d is feature h·hd + d in both, so flattening those axes
is all the reshaping needed. The original release names a block's layers LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3; big_vision numbers them
LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0, may stack all blocks in
one `encoderblock` array (scan), and keeps its position embedding outside `Transformer`
without a class-token slot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from vitcli.errors import VitError
from vitcli.files import atomic_write
from vitcli.model.preprocess import Preprocessing

Layout = Literal["vit", "big_vision"]
_NAMES = {  # layout → (first norm, attention, second norm, MLP)
    "vit": ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"),
    "big_vision": ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"),
}


MAX_INFLATION = 16  # weights barely compress (~1.1x); a zip bomb inflates 1000x
MAX_NPZ_BYTES = 64 * 2**30  # ViT-22B in float32 is 88 GB; ViT-G/14 7.5 GB


def check_inflated_size(path: Path) -> int:
    """The bytes the .npz's arrays take once read, refused when over a bound.

    Read from the zip directory before any member is inflated: at most MAX_INFLATION times
    the file's size (plus 1 MB for tiny files) and at most MAX_NPZ_BYTES.
    """
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise VitError(f"{path}: not a readable .npz file ({exc})") from None
    total = sum(m.file_size for m in members)
    bound = min(MAX_NPZ_BYTES, MAX_INFLATION * size + 2**20)
    if total > bound:
        raise VitError(f"{path}: its {len(members)} arrays would inflate to {total:,} bytes "
                       f"from a {size:,}-byte file (at most {bound:,}); refused as a possible "
                       "zip bomb")
    return total


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz file, without ever unpickling, wrapper prefixes removed."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise VitError(f"{path}: not readable ({exc.strerror or exc})") from None
    if magic[:2] != b"PK":  # a zip; numpy would treat anything else as a pickle
        raise VitError(f"{path}: not an .npz file (an .npz is a zip archive of arrays)")
    check_inflated_size(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays would need pickle
        raise VitError(f"{path}: holds pickled objects, refused ({exc})") from None
    except (OSError, EOFError) as exc:
        raise VitError(f"{path}: not a readable .npz file ({exc})") from None
    for prefix in ("opt/target/", "params/"):
        if arrays and all(k.startswith(prefix) for k in arrays):
            arrays = {k[len(prefix):]: v for k, v in arrays.items()}
    return arrays


def _unstack_scan(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision's scanned encoder (one array per layer type, depth first) → one per block."""
    stacked = {k: v for k, v in w.items() if k.startswith("Transformer/encoderblock/")}
    out = {k: v for k, v in w.items() if k not in stacked}
    for name, value in stacked.items():
        rest = name[len("Transformer/encoderblock/"):]
        for i in range(value.shape[0]):
            out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
    return out


def _image_tower(w: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """A two-tower checkpoint (SigLIP, LiT: img/…, txt/…, t, b): its image tower alone."""
    if not any(k.startswith("img/") for k in w):
        return w
    others = sorted({k.split("/")[0] for k in w if not k.startswith("img/")})
    if others:
        notes.append(f"two-tower checkpoint: the image tower (img/) kept, {', '.join(others)} "
                     "dropped")
    return {k[len("img/"):]: v for k, v in w.items() if k.startswith("img/")}


def npz_to_timm(w: dict[str, np.ndarray],
                where: str) -> tuple[dict[str, Tensor], dict[str, object], list[str]]:
    """A timm-layout state dict, the config fields the shapes give, and notes."""
    notes: list[str] = []
    w = _unstack_scan(_image_tower(dict(w), notes))
    if "embedding/kernel" not in w:
        raise VitError(f"{where}: no embedding/kernel; not a ViT .npz checkpoint")
    layout: Layout = ("big_vision" if any(re.match(r"Transformer/encoderblock_\d+/MlpBlock_0/", k)
                                          for k in w) else "vit")
    ln1, mha, ln2, mlp = _NAMES[layout]
    used: set[str] = set()
    notes.insert(0, f"npz layout: {'big_vision' if layout == 'big_vision' else 'original ViT'}")

    def take(name: str) -> np.ndarray:
        used.add(name)
        return w[name]

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).float()

    sd: dict[str, Tensor] = {
        "patch_embed.proj.weight": t(take("embedding/kernel").transpose(3, 2, 0, 1)),  # OIHW
        "patch_embed.proj.bias": t(take("embedding/bias")),
        "norm.weight": t(take("Transformer/encoder_norm/scale")),
        "norm.bias": t(take("Transformer/encoder_norm/bias")),
    }
    if "cls" in w:
        sd["cls_token"] = t(take("cls"))  # (1, 1, D)
    pos_name = next((n for n in ("Transformer/posembed_input/pos_embedding", "pos_embedding")
                     if n in w), None)
    if pos_name is None:
        raise VitError(f"{where}: no learned position embedding found")
    sd["pos_embed"] = t(take(pos_name))  # (1, [1 +] N, D); no class slot: timm adds a zero one
    if "pre_logits/kernel" in w:
        # The representation layer (Dense + tanh) of the ImageNet-21k checkpoints: vitcli has
        # none, so the head on top of it is dropped too and the features stay exact.
        used |= {"pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias"}
        notes.append("dropped pre_logits and the head above it: a feature extractor with no "
                     "classes, ready for fine-tuning with a new head")
    elif "head/kernel" in w:
        sd["head.weight"] = t(take("head/kernel").T)  # (K, D)
        sd["head.bias"] = t(take("head/bias"))
    depth = len({m.group(1) for k in w if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    heads = None
    for i in range(depth):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = (
            t(take(f"{p}{ln1}/scale")), t(take(f"{p}{ln1}/bias")))
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = (
            t(take(f"{p}{ln2}/scale")), t(take(f"{p}{ln2}/bias")))
        q, k, v = (take(f"{p}{mha}/{n}/kernel") for n in ("query", "key", "value"))
        D, heads = q.shape[0], q.shape[1]
        sd[b + "attn.qkv.weight"] = t(np.concatenate(
            [a.reshape(D, D).T for a in (q, k, v)]))  # (D, nh, hd) → (3D, D)
        if f"{p}{mha}/query/bias" in w:
            sd[b + "attn.qkv.bias"] = t(np.concatenate(
                [take(f"{p}{mha}/{n}/bias").reshape(D) for n in ("query", "key", "value")]))
        out = take(f"{p}{mha}/out/kernel").reshape(D, D)  # (nh, hd, D) → (nh·hd, D)
        sd[b + "attn.proj.weight"] = t(out.T)
        sd[b + "attn.proj.bias"] = t(take(f"{p}{mha}/out/bias"))
        for j in (0, 1):
            sd[f"{b}mlp.fc{j + 1}.weight"] = t(take(f"{p}{mlp}/Dense_{j}/kernel").T)
            sd[f"{b}mlp.fc{j + 1}.bias"] = t(take(f"{p}{mlp}/Dense_{j}/bias"))
    known: dict[str, object] = {"num_heads": heads, "layer_norm_eps": 1e-6}  # Flax's eps
    if "MAPHead_0/probe" in w:
        sd.update(_map_head(w, take, t))
        known["pooling"] = "map"
    if layout == "big_vision":
        # big_vision's MlpBlock applies flax's nn.gelu, whose default is the tanh
        # approximation (as transformers' SigLIP, gelu_pytorch_tanh). The original ViT layout
        # keeps the exact GELU that timm and transformers use for those weights.
        known["mlp_act"] = "gelu_tanh"
    leftover = sorted(set(w) - used)
    if leftover:
        raise VitError(f"{where}: not supported by vitcli's ViT: {', '.join(leftover[:4])}"
                       f"{' …' if len(leftover) > 4 else ''}")
    return sd, known, notes


def _map_head(w: dict[str, np.ndarray], take, t) -> dict[str, Tensor]:
    """big_vision's MAPHead_0 (models/vit.py) in timm's attn_pool names.

    A learned probe (1, 1, D) attends to the tokens (query from the probe, key and value from
    the tokens), then x + MLP(LayerNorm(x)); timm fuses key and value into one kv Linear.
    """
    p = "MAPHead_0/"
    a = p + "MultiHeadDotProductAttention_0/"

    def dense(name: str) -> np.ndarray:  # (D, nh, hd) → (nh·hd, D), ours (out, in)
        kernel = take(f"{a}{name}/kernel")
        return kernel.reshape(kernel.shape[0], -1).T

    out = take(f"{a}out/kernel")  # (nh, hd, D)
    return {
        "attn_pool.latent": t(take(p + "probe")),  # (1, 1, D)
        "attn_pool.q.weight": t(dense("query")),
        "attn_pool.q.bias": t(take(f"{a}query/bias").reshape(-1)),
        "attn_pool.kv.weight": t(np.concatenate([dense("key"), dense("value")])),  # (2D, D)
        "attn_pool.kv.bias": t(np.concatenate([take(f"{a}{n}/bias").reshape(-1)
                                               for n in ("key", "value")])),
        "attn_pool.proj.weight": t(out.reshape(-1, out.shape[-1]).T),
        "attn_pool.proj.bias": t(take(f"{a}out/bias")),
        "attn_pool.norm.weight": t(take(p + "LayerNorm_0/scale")),
        "attn_pool.norm.bias": t(take(p + "LayerNorm_0/bias")),
        **{f"attn_pool.mlp.fc{j + 1}.{kind}": t(take(f"{p}MlpBlock_0/Dense_{j}/{name}").T
                                                 if name == "kernel" else
                                                 take(f"{p}MlpBlock_0/Dense_{j}/{name}"))
           for j in (0, 1) for kind, name in (("weight", "kernel"), ("bias", "bias"))},
    }


def to_npz(model: torch.nn.Module, path: str | Path, layout: Layout = "vit") -> Path:
    """Write a VisionTransformer in the original ViT (or big_vision) .npz layout.

    The inverse of `npz_to_timm`; used to prove the importer right with a round trip.
    """
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    ln1, mha, ln2, mlp = _NAMES[layout]
    D, H = cfg.embed_dim, cfg.num_heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    if cfg.class_token:
        w["cls"] = sd["cls_token"]
    if layout == "big_vision":
        w["pos_embedding"] = sd["pos_embed"][:, cfg.num_prefix_tokens:]  # no class slot
        if cfg.class_token and np.any(sd["pos_embed"][:, 0]):
            raise VitError("big_vision has no class-token position; it must be zero to export")
    else:
        w["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    if cfg.num_classes:
        w["head/kernel"], w["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    for i in range(cfg.depth):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        w[f"{p}{ln1}/scale"], w[f"{p}{ln1}/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        w[f"{p}{ln2}/scale"], w[f"{p}{ln2}/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        for j, name in enumerate(("query", "key", "value")):
            kernel = sd[b + "attn.qkv.weight"][j * D:(j + 1) * D].T  # (D, D) in → out
            w[f"{p}{mha}/{name}/kernel"] = kernel.reshape(D, H, D // H)  # (D, nh, hd)
            if cfg.qkv_bias:
                w[f"{p}{mha}/{name}/bias"] = sd[b + "attn.qkv.bias"][j * D:(j + 1) * D].reshape(
                    H, D // H)  # (nh, hd)
        w[f"{p}{mha}/out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(H, D // H, D)
        w[f"{p}{mha}/out/bias"] = sd[b + "attn.proj.bias"]
        for j in (0, 1):
            w[f"{p}{mlp}/Dense_{j}/kernel"] = sd[f"{b}mlp.fc{j + 1}.weight"].T
            w[f"{p}{mlp}/Dense_{j}/bias"] = sd[f"{b}mlp.fc{j + 1}.bias"]
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **w)

    return atomic_write(path, write)


def npz_preprocessing(config) -> Preprocessing:
    """The JAX releases' eval input: the image resized straight to the model's size (no crop;
    big_vision's `resize`, vit_jax's `tf.image.resize`), pixels scaled to [-1, 1]
    (mean = std = 0.5). Bilinear in Pillow, which antialiases when it shrinks; TensorFlow's
    resize does not by default, so downscaled photos can differ slightly from the JAX
    pipeline's."""
    c = config.in_channels
    return Preprocessing(image_size=config.image_size, mean=(0.5,) * c, std=(0.5,) * c,
                         interpolation="bilinear", crop_fraction=1.0, resize_mode="squash",
                         convention="transformers", color_mode="L" if c == 1 else "RGB")
