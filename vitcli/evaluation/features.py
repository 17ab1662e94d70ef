"""What a model sees in each image: its pooled token before the head, for `vit audit --model`.

The features are the class token after the final norm (or whatever the model pools: the mean of
the patch tokens, a MAP head, DeiT's two tokens averaged), i.e. `forward_head(..., pre_logits
=True)`, the vector the classifier reads. Their cosine finds images the model cannot tell
apart, which perceptual hashes miss when a copy was cropped or recoloured.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Progress = Callable[[int, int], None]


def image_features(model_path: str | Path, paths: Sequence[str], *, device: str = "auto",
                   batch_size: int = 128, cache_dir: Path | None = None,
                   progress: Progress | None = None) -> np.ndarray:
    """float32 (N, D) unit-length features of the images at `paths` (rows of unreadable ones
    are 0), with the model file's own preprocessing.

    Pixels are decoded through the decode cache (vitcli.data.cache), keyed by every file's
    path, size and modification time and the preprocessing, so a second audit decodes nothing.
    """
    import torch

    from vitcli.data.cache import cache_key, decode_cached
    from vitcli.devices import resolve_device
    from vitcli.model.checkpoint import load_model

    target = resolve_device(device)
    loaded = load_model(model_path, device=str(target))
    pre, model = loaded.preprocessing, loaded.model
    s = pre.image_size
    identity = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        identity.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    decoded = decode_cached(list(paths), lambda a, b: list(paths[a:b]), pre.resize_crop,
                            shape=(s, s, pre.channels), mode=pre.color_mode,
                            key=cache_key("features", identity.hexdigest(), pre.to_json()),
                            cache_dir=cache_dir)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=target)
    std = torch.tensor(pre.std, dtype=torch.float32, device=target)
    out = np.zeros((len(paths), model.config.embed_dim), np.float32)
    model.eval()
    n = len(decoded.good)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(decoded.pixels[start:start + batch_size]))
            x = (batch.to(target).float() / 255.0 - mean) / std  # (B, S, S, C)
            x = x.permute(0, 3, 1, 2).contiguous()  # (B, C, S, S)
            feats = model.forward_head(model.forward_features(x), pre_logits=True)  # (B, D)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out[decoded.good[start:start + batch_size]] = feats.cpu().numpy()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return out


def similar_pairs(features: np.ndarray, min_cosine: float, chunk: int = 1024) -> np.ndarray:
    """int64 (P, 2) pairs i < j of unit rows whose cosine is at least `min_cosine`.

    Blocks of rows against the rows after them: O(N² · D) multiply-adds.
    """
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(features), chunk):
        block = features[start:start + chunk] @ features[start:].T  # (c, N - start)
        rows, cols = np.nonzero(block >= min_cosine)
        keep = cols > rows  # the upper triangle, the diagonal left out
        found.append(np.stack([rows[keep] + start, cols[keep] + start], axis=1)
                     .astype(np.int64))
    return np.concatenate(found)
