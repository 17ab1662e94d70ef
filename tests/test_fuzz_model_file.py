"""Fuzz the model file (issue 15): random damage must end in success or one VitError.

A small valid model file is mutated at random, seeded: header bytes, the header's length,
metadata JSON values (config, class names, preprocessing), tensor shapes, dtypes and byte
ranges, tensor values, truncation and trailing bytes. Each case runs in-process through the
validation, the loader and a forward pass (`vitcli.deploy.predict.predict`), under a time
bound; a handful run through `python -m vitcli predict` in a child under RLIMIT_AS and a
timeout. Anything but success or a VitError (a traceback type, a hang) fails the test.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitcli.errors import VitError

CASES = int(os.environ.get("VITCLI_FUZZ_CASES", "300"))
SEED = int(os.environ.get("VITCLI_FUZZ_SEED", "15"))
CASE_SECONDS = 10  # one case: validation + load + forward of a 2-block, 16-px model

HOSTILE_VALUES = [0, -1, 1, 2, 3, 7, 10**6, 10**9, 10**18, 2**63, -(2**63), 0.5, 1e-300,
                  1e308, float("nan"), float("inf"), float("-inf"), True, None, "x", "",
                  [], {}, [1, 2], {"a": 1}, "\x1b[2J", "[/]"]


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny valid model file, a 16-px image)."""
    import torch

    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = create_model(image_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2,
                         mlp_ratio=2.0, num_classes=3).eval()
    path = save_model(root / "seed.safetensors", model, class_names=["a", "b", "c"])
    image = root / "x.png"
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(image)
    return path, image


def split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()  # NaN/inf written the way Python writes them
    return len(blob).to_bytes(8, "little") + blob + data


def mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random kind of damage: (family, damaged bytes)."""
    header, data = split(raw)
    meta = header["__metadata__"]
    tensors = [k for k in header if k != "__metadata__"]
    family = rng.choice(["header bytes", "header length", "config value", "class names",
                         "preprocessing", "shape", "dtype", "offsets", "values",
                         "truncate/extend"])
    if family == "header bytes":
        n = int.from_bytes(raw[:8], "little")
        out = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(8, 8 + n)] = rng.randrange(256)
        return family, bytes(out)
    if family == "header length":
        n = rng.choice([0, 1, len(raw), 2**40, 2**64 - 1, rng.randrange(len(raw))])
        return family, n.to_bytes(8, "little") + raw[8:]
    if family == "config value":
        config = json.loads(meta["config"])
        key = rng.choice([*config, "unknown_field"])
        config[key] = rng.choice(HOSTILE_VALUES)
        meta["config"] = json.dumps(config)
    elif family == "class names":
        meta["class_names"] = rng.choice([
            json.dumps(["a", "b"]), json.dumps(["a", "b", "c", "d"]), json.dumps([1, 2, 3]),
            json.dumps({"a": 1}), "[[[" * 40, "[" * 5000 + "]" * 5000, "not json",
            json.dumps(["\x1b]52;c;eA==\x07", "[bold]x", "\udce9"]), json.dumps([])])
    elif family == "preprocessing":
        pre = json.loads(meta["preprocessing"])
        key = rng.choice([*pre, "unknown_field"])
        pre[key] = rng.choice(HOSTILE_VALUES)
        meta["preprocessing"] = json.dumps(pre)
    elif family == "shape":
        entry = header[rng.choice(tensors)]
        entry["shape"] = rng.choice([[], [0], [1], [10**12], [3, 3], [-1],
                                     [*entry["shape"], 1], entry["shape"][::-1]])
    elif family == "dtype":
        header[rng.choice(tensors)]["dtype"] = rng.choice(
            ["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "Q4", ""])
    elif family == "offsets":
        entry = header[rng.choice(tensors)]
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[begin, end + 4], [begin + 4, end], [end, begin],
                                            [0, end - begin], [begin, 2**62]])
    elif family == "values":
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(0, len(out) - 4, 4)
            out[i:i + 4] = rng.choice([np.float32(np.nan).tobytes(),
                                       np.float32(np.inf).tobytes(),
                                       np.float32(3e38).tobytes(), os.urandom(4)])
        data = bytes(out)
    else:
        cut = rng.choice([rng.randrange(len(raw)), len(raw) - 1])
        return family, rng.choice([raw[:cut], raw + os.urandom(rng.randint(1, 64))])
    return family, join(header, data)


class Hung(Exception):
    pass


def _alarm(*_: object) -> None:
    raise Hung("a case ran past its time bound")


def test_random_damage_ends_in_success_or_one_vit_error(seed_file, tmp_path):
    from vitcli.deploy.predict import predict

    seed, image = seed_file
    raw = seed.read_bytes()
    rng = random.Random(SEED)
    tried: Counter[str] = Counter()
    outcome: Counter[tuple[str, str]] = Counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES):
            family, damaged = mutate(raw, rng)
            path = tmp_path / f"case{case % 4}.safetensors"
            path.write_bytes(damaged)
            tried[family] += 1
            start = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                results = predict(path, [image], topk=3, device="cpu")
                assert all(r.ok for r in results), results
                assert all(math.isfinite(p) for r in results for p in r.probabilities)
                outcome[(family, "ok")] += 1
            except VitError as exc:
                message = str(exc)
                assert message and "\n" not in message.strip(), message
                outcome[(family, "refused")] += 1
            finally:
                signal.alarm(0)
            assert time.perf_counter() - start < CASE_SECONDS
    finally:
        signal.signal(signal.SIGALRM, previous)
    report = ", ".join(f"{family}: {tried[family]} tried, {outcome[(family, 'refused')]} "
                       f"refused, {outcome[(family, 'ok')]} ok" for family in sorted(tried))
    print(f"\nfuzz (seed {SEED}, {CASES} cases): {report}")
    assert sum(tried.values()) == CASES and len(tried) >= 8


@pytest.mark.slow
def test_damaged_files_through_the_cli_under_limits(seed_file, tmp_path):
    from test_hostile import child, one_error

    seed, image = seed_file
    raw = seed.read_bytes()
    rng = random.Random(SEED + 1)
    for case in range(2):  # a child costs a torch import: a few seconds each
        family, damaged = mutate(raw, rng)
        while family == "values":  # values can be harmless: take damage that must be refused
            family, damaged = mutate(raw, rng)
        path = tmp_path / f"cli{case}.safetensors"
        path.write_bytes(damaged)
        code, out, err = child("predict", image, "-m", path, "--json", timeout=60,
                               memory=2 * 1024**3)
        if code == 0:
            assert json.loads(out)["label"] in ("a", "b", "c"), (family, out)
        else:
            one_error(code, err)
