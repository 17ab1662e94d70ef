"""vitcli.data.image_set: every --data layout, splits, bad files, odd image modes, errors and the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, draw_shape, make_image_folder
from PIL import Image

from vitcli.data.image_set import load_data, load_eval_data, typical_image_size
from vitcli.errors import UsageError, VitError
from vitcli.images import open_image
from vitcli.model.preprocess import Preprocessing

PRE = Preprocessing(image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(data, cache: Path, **kw):
    return load_data(data, preprocessing=kw.pop("preprocessing", PRE), cache_dir=cache, **kw)


# ------------------------------------------------------------------------------- layouts


def test_class_folders(image_folder: Path, cache: Path) -> None:
    bundle = load(image_folder, cache)
    assert bundle.class_names == CLASSES
    assert bundle.val is None  # 8 per class: too few for the default 10 % split
    assert bundle.train.pixels.shape == (24, 16, 16, 3) and bundle.train.pixels.dtype == np.uint8
    assert bundle.train.labels.dtype == np.int64
    assert np.bincount(bundle.train.labels).tolist() == [8, 8, 8]
    assert bundle.bad_files == []
    assert all(Path(p).parent.name == CLASSES[y]
               for p, y in zip(bundle.train.paths, bundle.train.labels))
    assert "24 train" in bundle.description


@pytest.mark.parametrize("val_name", ["val", "validation", "test"])
def test_split_folders(tmp_path: Path, cache: Path, val_name: str) -> None:
    make_image_folder(tmp_path / "d" / "train", per_class=3)
    make_image_folder(tmp_path / "d" / val_name, per_class=2, seed=1)
    bundle = load(tmp_path / "d", cache)
    assert bundle.class_names == CLASSES
    assert len(bundle.train) == 9 and len(bundle.val) == 6
    assert all(f"/{val_name}/" in p for p in bundle.val.paths)
    images, bad = load_eval_data(tmp_path / "d", preprocessing=PRE, cache_dir=cache)
    assert len(images) == 6 and bad == []
    train_only, _ = load_eval_data(tmp_path / "d", preprocessing=PRE, split="train",
                                   cache_dir=cache)
    assert len(train_only) == 9


def test_class_named_like_a_split_is_a_class(tmp_path: Path, cache: Path) -> None:
    make_image_folder(tmp_path / "d", per_class=2, classes=["dev", "test", "zebra"])
    bundle = load(tmp_path / "d", cache)
    assert bundle.class_names == ["dev", "test", "zebra"] and len(bundle.train) == 6


def _saved_dataset(root: Path, dict_: bool) -> Path:
    import datasets

    rng = np.random.default_rng(0)

    def rows(n: int) -> dict:
        images, labels = [], []
        for i in range(n):
            buf = io.BytesIO()
            draw_shape(CLASSES[i % 3], 24, rng).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": None})
            labels.append(i % 3)
        return {"picture": images, "target": labels, "note": ["x"] * n}

    features = datasets.Features({"picture": datasets.Image(),
                                  "target": datasets.ClassLabel(names=CLASSES),
                                  "note": datasets.Value("string")})
    train = datasets.Dataset.from_dict(rows(9), features=features)
    if dict_:
        test = datasets.Dataset.from_dict(rows(6), features=features)
        datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root))
    else:
        train.save_to_disk(str(root))
    return root


@pytest.mark.parametrize("dict_", [True, False])
def test_saved_dataset(tmp_path: Path, cache: Path, dict_: bool) -> None:
    path = _saved_dataset(tmp_path / "saved", dict_)
    bundle = load(path, cache)
    assert bundle.class_names == CLASSES
    assert len(bundle.train) == 9 and bundle.train.pixels.shape[1:] == (16, 16, 3)
    assert bundle.train.labels.tolist() == [0, 1, 2] * 3
    assert bundle.train.paths[0] == "saved[train][0]"
    if dict_:
        assert len(bundle.val) == 6 and "test split" in bundle.description
    else:
        assert bundle.val is None


def test_hub_name_offline_is_a_clear_error(monkeypatch, cache: Path) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(VitError, match="Hub is unreachable.*local folder"):
        load("someone/some-dataset", cache)


def test_hub_name_without_network_is_a_clear_error(monkeypatch, cache: Path) -> None:
    import datasets

    def no_network(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setattr("vitcli.data.sources.hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(VitError, match="Hub is unreachable"):
        load("mnist", cache)


def test_unreachable_hub_fails_fast_without_retrying(monkeypatch, cache: Path) -> None:
    import datasets

    def must_not_run(*args, **kwargs):
        raise AssertionError("load_dataset must not be tried when the Hub is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    monkeypatch.setattr("vitcli.data.sources.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(VitError, match="Hub is unreachable.*no connection"):
        load("someone/some-dataset", cache)


# ------------------------------------------------------------------------------- splits


def test_val_split_is_stratified_and_seeded(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=5)
    a = load(root, cache, val_split=0.4, seed=3)
    b = load(root, cache, val_split=0.4, seed=3)
    c = load(root, cache, val_split=0.4, seed=4)
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert np.bincount(a.val.labels).tolist() == [2, 2, 2]
    assert sorted(a.train.paths + a.val.paths) == sorted(load(root, cache, val_split=0).train.paths)
    assert "stratified 40% split, seed 3" in a.description


def test_default_validation_when_every_class_has_ten(tmp_path: Path, cache: Path) -> None:
    bundle = load(make_image_folder(tmp_path / "d", per_class=10, size=20), cache)
    assert np.bincount(bundle.val.labels).tolist() == [1, 1, 1]
    assert len(bundle.train) == 27


def test_eval_val_split_is_the_set_training_held_out(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=10, size=20)
    for kw in ({"val_split": 0.4, "seed": 3}, {}):  # explicit, then the default 10 %, seed 0
        held_out = load(root, cache, **kw).val
        images, _ = load_eval_data(root, preprocessing=PRE, cache_dir=cache,
                                   val_split=kw.get("val_split", 0.1), seed=kw.get("seed", 0))
        assert images.paths == held_out.paths and len(images.paths) in (12, 3)
        assert np.array_equal(images.pixels, held_out.pixels)
    assert "10% of its training images held out with seed 0" in images.description
    with pytest.raises(UsageError, match="--split and --val-split"):
        load_eval_data(root, preprocessing=PRE, cache_dir=cache, val_split=0.1, split="train")
    with pytest.raises(UsageError, match=r"must be in \(0, 1\)"):
        load_eval_data(root, preprocessing=PRE, cache_dir=cache, val_split=0.0)


def test_val_path(tmp_path: Path, cache: Path, image_folder: Path) -> None:
    val = make_image_folder(tmp_path / "v", per_class=2, classes=["square", "triangle"])
    bundle = load(image_folder, cache, val=val)
    assert sorted(set(bundle.val.labels.tolist())) == [1, 2]  # renumbered to train's classes
    other = make_image_folder(tmp_path / "o", per_class=1, classes=["circle", "star"])
    with pytest.raises(VitError, match="star"):
        load(image_folder, cache, val=other)


def test_train_keeps_whole_image_val_is_eval_crop(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=2, size=40)
    pre = dataclasses.replace(PRE, crop_fraction=0.5)
    bundle = load(root, cache, preprocessing=pre, val_split=0.5)
    path = bundle.val.paths[0]
    assert np.array_equal(bundle.val.pixels[0], pre.resize_crop(open_image(path)))
    whole = dataclasses.replace(pre, crop_fraction=1.0)
    assert np.array_equal(bundle.train.pixels[0],
                          whole.resize_crop(open_image(bundle.train.paths[0])))
    evaluated, _ = load_eval_data(root, preprocessing=pre, cache_dir=cache)
    i = evaluated.paths.index(path)
    assert np.array_equal(evaluated.pixels[i], bundle.val.pixels[0])


def test_typical_image_size(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name, size in [("a", (40, 30)), ("a", (50, 36)), ("b", (64, 64))]:
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(root / name / f"{size[0]}.png")
    assert typical_image_size(root) == 36


# ------------------------------------------------------------------------------- bad files


def test_bad_files_are_skipped_and_reported(image_folder: Path, cache: Path,
                                            monkeypatch) -> None:
    circle = image_folder / "circle"
    (circle / "zero.png").write_bytes(b"")
    (circle / "text.png").write_text("not a picture")
    good = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(good, format="JPEG")
    (circle / "cut.jpg").write_bytes(good.getvalue()[:200])
    (circle / "noise.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(300))
    (circle / "notes.txt").write_text("hello")
    Image.new("RGB", (60, 60)).save(circle / "huge.png")  # a "bomb" under the limit below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # 32×32 fine, 60×60 over 2×limit

    def snapshot() -> dict:
        return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                for p in image_folder.rglob("*") if p.is_file()}

    before = snapshot()
    bundle = load(image_folder, cache)
    assert len(bundle.train) == 24  # every good image still loads
    named = {Path(p).name: reason for p, reason in bundle.bad_files}
    assert set(named) == {"zero.png", "text.png", "cut.jpg", "noise.jpg", "notes.txt",
                          "huge.png"}
    assert "not an image" in named["text.png"] and "ignored" in named["notes.txt"]
    assert "decompression bomb" in named["huge.png"]
    assert snapshot() == before  # the user's files are never modified, nor touched


def test_odd_modes_load(tmp_path: Path, cache: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=1)
    a = root / "circle"
    Image.fromarray(np.full((20, 20), 32896, np.uint16)).save(a / "deep.png")  # 128 × 257
    Image.fromarray(np.full((20, 20), 200, np.uint16)).save(a / "dark16.png")  # dark, not 200
    upright = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high, top half white
    upright[:5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: the white half goes to the right
    Image.fromarray(upright).save(a / "phone.jpg", exif=exif, quality=100)
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(a / "cmyk.jpg")  # red in CMYK
    Image.new("RGB", (20, 20), (0, 0, 255)).convert("P").save(a / "palette.png")
    Image.new("LA", (20, 20), (10, 255)).save(a / "grey_alpha.png")
    bundle = load(root, cache)
    assert bundle.bad_files == [] and len(bundle.train) == 9
    px = {Path(p).name: bundle.train.pixels[i] for i, p in enumerate(bundle.train.paths)}
    assert (px["deep.png"] == 128).all()  # 16-bit rescaled (32896/257), not clipped to 255
    assert (px["dark16.png"] == 1).all()  # 200/257 rounds to 1: a 16-bit file, not 8-bit
    rot = px["phone.jpg"].astype(int)  # EXIF applied: (16, 16, 3), white on the right
    assert rot[:, :6].mean() < 30 and rot[:, -6:].mean() > 225
    assert px["cmyk.jpg"][..., 0].min() > 200 and px["cmyk.jpg"][..., 1].max() < 60
    assert (px["palette.png"][..., 2] == 255).all() and (px["palette.png"][..., 0] == 0).all()
    grey = load(root, cache, preprocessing=dataclasses.replace(PRE, color_mode="L",
                                                              mean=(0.5,), std=(0.5,)))
    assert grey.train.pixels.shape == (9, 16, 16, 1)


# ------------------------------------------------------------------------------- errors


def test_errors_before_training(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(VitError, match="no such folder"):
        load(tmp_path / "missing", cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitError, match="no class sub-folders"):
        load(tmp_path / "empty", cache)
    one = make_image_folder(tmp_path / "one", per_class=2, classes=["cat"])
    with pytest.raises(VitError, match="one class.*cat"):
        load(one, cache)
    unreadable = make_image_folder(tmp_path / "u", per_class=2, classes=["cat", "dog"])
    (unreadable / "eel").mkdir()
    (unreadable / "eel" / "1.png").write_bytes(b"")
    with pytest.raises(VitError, match="'eel' has no readable"):
        load(unreadable, cache)
    (unreadable / "eel" / "1.png").unlink()
    with pytest.raises(VitError, match="'eel' has no image"):
        load(unreadable, cache)


def test_eval_of_a_single_class_folder(tmp_path: Path, cache: Path) -> None:
    one = make_image_folder(tmp_path / "one", per_class=2, classes=["cat"])
    images, _ = load_eval_data(one, preprocessing=PRE, cache_dir=cache)
    assert images.class_names == ["cat"] and images.labels.tolist() == [0, 0]
    with pytest.raises(VitError, match="no split 'val'"):
        load_eval_data(one, preprocessing=PRE, split="val", cache_dir=cache)


# ------------------------------------------------------------------------------- cache


def test_cache_is_reused_and_invalidated(image_folder: Path, cache: Path, monkeypatch) -> None:
    import datasets

    import vitcli.images

    calls = []
    real = vitcli.images.open_image

    def counting(path, mode="RGB", **kwargs):
        calls.append(path)
        return real(path, mode, **kwargs)

    monkeypatch.setattr(vitcli.images, "open_image", counting)
    first = load(image_folder, cache)
    assert len(calls) == 24
    calls.clear()

    def no_listing(*args, **kwargs):
        raise AssertionError("the folder listing should come from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(datasets, "load_dataset", no_listing)
        second = load(image_folder, cache)
    assert calls == [] and np.array_equal(first.train.pixels, second.train.pixels)
    assert second.train.paths == first.train.paths
    changed = image_folder / "square" / "000.png"
    Image.new("RGB", (32, 32), "white").save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse clocks
    third = load(image_folder, cache)
    assert len(calls) == 24
    i = third.train.paths.index(str(changed))
    assert (third.train.pixels[i] == 255).all()
    assert any(cache.glob("*.npy")) and not any(cache.glob("*.tmp"))


def test_large_sets_are_memory_mapped(image_folder: Path, cache: Path, monkeypatch) -> None:
    import vitcli.data.cache

    in_memory = load(image_folder, cache / "ram")
    (image_folder / "square" / "zz_empty.png").write_bytes(b"")
    monkeypatch.setattr(vitcli.data.cache, "MEMORY_LIMIT", 0)
    first = load(image_folder, cache / "disk")  # decoded straight into the cache file
    again = load(image_folder, cache / "disk")
    for images in (first.train, again.train):
        assert isinstance(images.pixels, np.memmap) and len(images) == 24
        assert np.array_equal(images.pixels, in_memory.train.pixels)
    assert [Path(p).name for p, _ in again.bad_files] == ["zz_empty.png"]


def test_progress_is_reported(image_folder: Path, cache: Path) -> None:
    seen = []
    load(image_folder, cache, val_split=0.25, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (24, 24) and all(t == 24 for _, t in seen)


def test_a_mistyped_folder_is_not_taken_for_a_hub_name(tmp_path: Path, monkeypatch) -> None:
    """`examples/shape` beside an existing `examples/shapes` once gave a long line about the
    Hugging Face Hub being unreachable; it is a missing folder, with the close name."""
    from vitcli.data import sources

    (tmp_path / "examples" / "shapes").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "from_hub", lambda *a, **k: pytest.fail("asked the Hub"))
    with pytest.raises(VitError) as err:
        sources.open_source("examples/shape")
    assert str(err.value) == "examples/shape: no such folder (did you mean examples/shapes?)"
    with pytest.raises(VitError, match=r"^examples/zzz: no such folder$"):
        sources.open_source("examples/zzz")


def test_skipped_entries_are_counted_by_kind_in_one_wording():
    """One wording for what the listing and the decoder left out, for every command: a
    notes.txt is a file that is not an image, a .png Pillow cannot read an unreadable image."""
    from vitcli.data.discovery import (
        BROKEN_LINK,
        IGNORED,
        NOT_IMAGE,
        UNREADABLE,
        Skipped,
        skipped_summary,
        skipped_words,
    )

    assert skipped_words([NOT_IMAGE]) == "1 file that is not an image"
    assert skipped_words([NOT_IMAGE + IGNORED] * 2) == "2 files that are not images"
    decoder = "not an image file (or a format Pillow cannot read)"  # a broken .png
    assert skipped_words([decoder]) == "1 unreadable image"
    assert skipped_words([BROKEN_LINK, NOT_IMAGE, decoder, f"{UNREADABLE} (Permission "
                          "denied)"]) == ("1 broken link, 1 file that is not an image, 1 "
                                          "unreadable image and 1 unreadable folder")
    line = skipped_summary([Skipped("a/notes.txt", NOT_IMAGE)])
    assert line == "skipped 1 file that is not an image: a/notes.txt"
