"""Import ViT weights from timm, Hugging Face `transformers` and the original JAX release.

Each source is renamed into timm's layout (which is ours), its config inferred from the
shapes plus whatever its config files say, and the result written as an ordinary vitcli
model file. Pickle files are read only when the user asks, and then only with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.

    load_source(path)            → Converted (weights, config, labels, preprocessing, notes)
    convert(path, out, ...)      → the written model file
    download_from_hub(repo_id)   → a local folder (hub.py), or a clear offline error
    pretrained_file(name_or_id)  → a converted model file for a Hub id or a catalog short name
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vitcli.convert import hf, npz, timm
from vitcli.convert.hub import download_from_hub as download_from_hub  # re-exported
from vitcli.errors import UsageError, VitError
from vitcli.files import check_regular_file, read_json_file
from vitcli.model.checkpoint import PICKLE_SUFFIXES, read_header, refusal_message, save_model
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vitcli.model.validate import check_finite

SUPPORTED = ("a timm state dict (.safetensors), a transformers folder (config.json + "
             "model.safetensors: ViT, DeiT, ViT-MAE, DINOv2, CLIP, SigLIP), an original ViT / "
             "big_vision .npz, or a PyTorch pickle (.bin/.pth/.pt/.ckpt, with --allow-pickle)")


@dataclass
class Converted:
    """A source checkpoint in vitcli's terms, before it is written."""

    state: dict[str, Tensor]
    config: ViTConfig
    source: str  # what it was converted from, stored as the model file's "source"
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    notes: list[str] = field(default_factory=list)


def load_source(source: str | Path, *, heads: int | None = None,
                allow_pickle: bool = False) -> Converted:
    """Read any supported checkpoint (file or folder) and convert it to vitcli's layout."""
    path = Path(source)
    if not path.exists():
        raise VitError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path, heads=heads, allow_pickle=allow_pickle)
    check_regular_file(path, "checkpoint")  # before anything opens it: a FIFO would hang
    suffix = path.suffix.lower()
    if suffix == ".npz":
        state, known, notes = npz.npz_to_timm(npz.read_npz(path), str(path))
        config, more = timm.config_from_state_dict(state, str(path), heads=heads, **known)
        pre = npz.npz_preprocessing(config)
        return Converted(state, config, f"original ViT / big_vision npz: {path.name}",
                         preprocessing=pre, notes=notes + more)
    if suffix in PICKLE_SUFFIXES:
        state = load_pickle(path, allow_pickle)
        sibling = path.parent / "config.json"
        return _from_state(state, path, heads, _read_json(sibling) if sibling.exists() else None)
    if suffix == ".safetensors":
        _, metadata = read_header(path)
        if metadata.get("format") == "vitcli":
            raise UsageError(f"{path}: already a vitcli model file; nothing to convert")
        sibling = path.parent / "config.json"
        return _from_state(_load_safetensors([path]), path, heads,
                           _read_json(sibling) if sibling.exists() else None)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol / torch zip
        return _from_state(load_pickle(path, allow_pickle), path, heads, None)
    raise VitError(f"{path}: unknown checkpoint format; vit convert reads {SUPPORTED}")


def _load_folder(folder: Path, *, heads: int | None, allow_pickle: bool) -> Converted:
    """A Hub-style folder: config.json beside model.safetensors (or a pickle, if allowed)."""
    cfg = _read_json(folder / "config.json") if (folder / "config.json").exists() else None
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        state = _load_safetensors([folder / "model.safetensors"])
        where = folder / "model.safetensors"
    elif index.exists():  # sharded: the index names the shard of every tensor
        state = _load_safetensors(shard_paths(folder, _read_json(index), index))
        where = index
    elif (folder / "pytorch_model.bin").exists():
        where = folder / "pytorch_model.bin"
        state = load_pickle(where, allow_pickle)
    else:
        raise VitError(f"{folder}: no model.safetensors (or pytorch_model.bin) in this folder")
    processor_file = folder / "preprocessor_config.json"
    processor = _read_json(processor_file) if processor_file.exists() else None
    converted = _from_state(state, where, heads, cfg, processor)
    converted.source = converted.source.replace(where.name, folder.name)
    return converted


def _from_state(state: dict[str, Tensor], path: Path, heads: int | None,
                cfg: dict[str, Any] | None,
                processor: dict[str, Any] | None = None) -> Converted:
    """A state dict in timm or transformers layout (+ its config.json, if any) → Converted."""
    where = str(path)
    notes = _to_float32(state)
    if hf.is_hf_layout(state) or (cfg is not None and "model_type" in cfg):
        if cfg is None:
            raise VitError(f"{where}: transformers weights need their config.json beside "
                           "them (it holds the architecture); convert the whole folder")
        imported = hf.import_folder(state, cfg, processor, where, heads)
        return Converted(imported.state, imported.config,
                         f"transformers {imported.family}: {path.name}", imported.class_names,
                         imported.preprocessing, notes + imported.notes)
    if not timm.is_timm_layout(state):
        raise VitError(f"{where}: neither timm's ViT names (patch_embed.proj.weight) nor "
                       "transformers' (embeddings.patch_embeddings); "
                       f"vit convert reads {SUPPORTED}")
    timm_cfg = bool(cfg and ("architecture" in cfg or "pretrained_cfg" in cfg))
    known = timm.timm_folder_fields(cfg, where) if timm_cfg else {}
    claim = f"config.json: {cfg['architecture']}" if timm_cfg and cfg.get("architecture") \
        else None
    config, more = timm.config_from_state_dict(state, where, heads=heads, claim=claim, **known)
    pre = timm.timm_preprocessing((cfg or {}).get("pretrained_cfg") or {}, config, where, more)
    labels = (cfg or {}).get("label_names")
    names = [str(n) for n in labels] if labels and len(labels) == config.num_classes else None
    return Converted(state, config, f"timm state dict: {path.name}", names, pre, notes + more)


def _pretrained_preprocessing(config: ViTConfig, *, mean: Any, std: Any, crop: float,
                              interpolation: str | None = None) -> Preprocessing:
    """Preprocessing for pre-trained weights (given or per-source defaults)."""
    c = config.in_channels
    mean = (mean,) * c if isinstance(mean, float) else tuple(mean)[:c]
    std = (std,) * c if isinstance(std, float) else tuple(std)[:c]
    return Preprocessing(image_size=config.image_size, mean=mean, std=std,
                         interpolation=interpolation if interpolation in
                         ("nearest", "bilinear", "bicubic", "lanczos") else "bicubic",
                         crop_fraction=min(crop, 1.0), color_mode="L" if c == 1 else "RGB")


def _to_float32(state: dict[str, Tensor]) -> list[str]:
    """Cast half-precision weights to float32 in place (vitcli runs float32 weights)."""
    dtypes = {str(v.dtype) for v in state.values() if v.is_floating_point()
              and v.dtype != torch.float32}
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v.float()
    return [f"weights cast from {', '.join(sorted(dtypes))} to float32"] if dtypes else []


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, max_bytes=64 * 1024 * 1024)  # bounded size and depth
    if not isinstance(data, dict):
        raise VitError(f"{path}: expected a JSON object")
    return data


def shard_paths(folder: Path, index: dict[str, Any], where: Path) -> list[Path]:
    """The shard files a transformers index names, each a plain file inside `folder`.

    A name with a folder part, `..`, or a link leading outside would make convert read a
    file the user never gave it (`../../home/me/.ssh/id_rsa`): refused.
    """
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise VitError(f"{where}: no weight_map naming the shard files")
    root = folder.resolve()
    paths = []
    for name in sorted({str(v) for v in weight_map.values()}):
        candidate = (folder / name).resolve()
        if Path(name).name != name or candidate.parent != root:
            raise VitError(f"{where}: names a shard outside its folder ({name!r}); refused")
        paths.append(folder / name)
    return paths


def _load_safetensors(paths: list[Path]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    for path in paths:
        read_header(path)  # clear errors for missing, truncated or pickle files
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise VitError(f"{path}: corrupt safetensors file ({exc})") from None
        check_finite(path, loaded)
        state.update(loaded)
    return state


def load_pickle(path: Path, allow_pickle: bool) -> dict[str, Tensor]:
    """A state dict from a PyTorch pickle: only with the user's consent, only weights_only."""
    import pickle

    if not allow_pickle:
        with open(path, "rb") as f:
            head = f.read(9)
        # The same message the model-file reader gives, so users learn one fix.
        raise VitError(refusal_message(path, head, path.stat().st_size))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe object"
        raise VitError(f"{path}: holds more than weights, refused by weights_only loading "
                       f"({first}); save just model.state_dict()") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise VitError(f"{path}: not a readable PyTorch file ({exc})") from None
    for key in ("state_dict", "model", "model_state_dict", "model_state", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise VitError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return timm.strip_prefixes(state)


def parse_labels(value: str) -> list[str]:
    """Class names from a file (one per line, or a JSON list / id→name object) or 'a,b,c'."""
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() != ".json":
                return [line.strip() for line in text.splitlines() if line.strip()]
            data = json.loads(text)
            if isinstance(data, dict):  # id2label style: {"0": "cat", "1": "dog"}
                return [str(data[k]) for k in sorted(data, key=int)]
            if isinstance(data, list):
                return [str(x) for x in data]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise UsageError(f"--labels {path}: not a readable label file ({exc})") from None
        raise UsageError(f"--labels {path}: expected a JSON list of names or an id→name object")
    if "," not in value and ("/" in value or "." in value):
        raise UsageError(f"--labels {value}: no such file (or give names as a,b,c)")
    return [name.strip() for name in value.split(",") if name.strip()]


def build_model(converted: Converted) -> torch.nn.Module:
    """The VisionTransformer holding the converted weights (built on 'meta', no init cost)."""
    from vitcli.model.vit import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(converted.config)
    missing, unexpected = model.load_state_dict(converted.state, strict=False, assign=True)
    if missing or unexpected:
        raise VitError(f"converted weights do not fit the inferred architecture "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


# The files a checkpoint folder may hold that vit convert reads: --out must not replace them.
_FOLDER_INPUTS = {"config.json", "preprocessor_config.json", "model.safetensors",
                  "model.safetensors.index.json", "pytorch_model.bin"}


def check_out(source: str | Path, out: str | Path) -> None:
    """Refuse an --out that would replace the source (user files are never modified)."""
    src, dst = Path(source).resolve(), Path(out).resolve()
    if dst.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as "
                         f"{Path(out) / 'model.safetensors'}")
    inside = src.is_dir() and dst.parent == src and (
        dst.name in _FOLDER_INPUTS or dst.name.startswith("model-"))
    if dst == src or inside:
        raise UsageError(f"--out {out} would overwrite the checkpoint being converted; "
                         "write the vitcli model file under another name")


def convert(source: str | Path, out: str | Path, *, labels: list[str] | None = None,
            heads: int | None = None, allow_pickle: bool = False,
            source_name: str | None = None) -> tuple[Path, Converted]:
    """Convert `source` and write it to `out` as a vitcli model file."""
    check_out(source, out)
    converted = load_source(source, heads=heads, allow_pickle=allow_pickle)
    check_finite(source, converted.state)  # whatever the source format
    names = labels if labels is not None else converted.class_names
    n = converted.config.num_classes
    if names is not None and len(names) != n:
        raise UsageError(f"{len(names)} labels given for a model with {n} classes")
    if source_name:
        converted.source = f"{converted.source} ({source_name})"
    model = build_model(converted)
    pre = converted.preprocessing or _pretrained_preprocessing(
        converted.config, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=0.875)
    path = save_model(out, model, class_names=names, preprocessing=pre,
                      extra={"source": converted.source})
    return path, converted


def pretrained_file(name_or_id: str, cache_dir: str | Path) -> tuple[Path, str]:
    """A vitcli model file for a Hub id or a short name of the catalog (catalog.py), and a line
    saying what it is.

    The repository is downloaded (or found in the Hub cache) and converted once; the converted
    file is kept in `cache_dir` under the repository's snapshot (commit), so a new revision is
    converted anew and an unchanged one is not. Offline and not cached: one VitError line that
    names the files to fetch and the command that fetches them.
    """
    from vitcli.convert.catalog import hub_id_for

    repo_id = hub_id_for(name_or_id)
    folder = download_from_hub(repo_id)
    out = Path(cache_dir) / f"{repo_id.replace('/', '--')}--{folder.name}.safetensors"
    named = f" ({name_or_id})" if repo_id != name_or_id.strip() else ""
    if out.exists():
        return out, f"{repo_id}{named}: converted earlier, {out}"
    out.parent.mkdir(parents=True, exist_ok=True)
    path, converted = convert(folder, out, source_name=repo_id)
    return path, f"{repo_id}{named}: {converted.source} converted to {path}"
