"""`vit audit`: planted duplicates, leakage and two-label images are all found and nothing else;
perceptual hashes hold under re-encoding, resizing and brightness; `vit train` warns in one line.

The data are generated: random shapes on smooth random textures, every image distinct.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from typer.testing import CliRunner

from vitcli.data.audit import audit
from vitcli.data.duplicates import NEAR_HASH_BITS, NEAR_THUMB_COSINE
from vitcli.data.perceptual import dhash, hamming, phash, thumbnail, thumbnail_cosine

CLASSES = ["cat", "dog", "fox"]
EVIL = "evil\x1b[2J[bold red]x.png"  # a terminal escape and Rich markup in a file name
LATIN1 = os.fsdecode(b"01-copy-caf\xe9.png")  # a name that is not UTF-8


def distinct_image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A smooth random texture (6×6 noise, bicubic) with 3-6 random shapes and fine noise."""
    low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(10, size // 2)), y0 + int(rng.integers(10, size // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = (draw.ellipse, draw.rectangle)[int(rng.integers(0, 2))]
        shape([x0, y0, x1, y1], fill=colour)
    fine = rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im, np.int16) + fine, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 80) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def clean_folder(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """train/ and val/ folders of distinct PNGs (one grey image, to count colour modes)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", 2)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                distinct_image(rng).save(root / split / name / f"{i:02d}.png")
    Image.open(root / "train/cat/00.png").convert("L").save(root / "train/cat/00.png")
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A clean folder with one of each kind of problem planted in it (see the test)."""
    root = clean_folder(tmp_path / "data")
    t, v = root / "train", root / "val"
    shutil.copy(t / "cat/01.png", t / "cat" / LATIN1)  # 1. same bytes, within a class
    Image.open(t / "dog/01.png").save(t / "dog/01-again.bmp")  # 2. same pixels, other file
    jpeg(Image.open(t / "fox/01.png"), 80).save(t / "fox/01-small.png")  # 3. near, within
    shutil.copy(t / "dog/02.png", v / "dog/leak.png")  # 4. same bytes, train and val
    src = Image.open(t / "fox/02.png")  # 5. near across splits: resized and brighter JPEG
    brighter = ImageEnhance.Brightness(src.resize((72, 72), Image.Resampling.BILINEAR))
    jpeg(brighter.enhance(1.1), 85).save(v / "fox/leak.jpg")
    shutil.copy(t / "cat/03.png", t / "dog" / EVIL)  # 6. same bytes under two labels
    (t / "cat/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # unreadable
    (t / "cat/notes.txt").write_text("not an image")  # ignored by discovery
    return root


def _names(report, group) -> set[str]:
    return {str(Path(report.files[i].path).relative_to(report.data)) for i in group.members}


def test_planted_problems_are_all_found_and_nothing_else(planted: Path, tmp_path: Path):
    report = audit(planted, cache_dir=tmp_path / "cache")
    found = {(g.kind, g.match, g.scope, frozenset(_names(report, g))) for g in report.groups}
    assert found == {
        ("exact", "bytes", "within class", frozenset({"train/cat/01.png", f"train/cat/{LATIN1}"})),
        ("exact", "pixels", "within class", frozenset({"train/dog/01.png",
                                                       "train/dog/01-again.bmp"})),
        ("near", "perceptual", "within class", frozenset({"train/fox/01.png",
                                                          "train/fox/01-small.png"})),
        ("exact", "bytes", "across splits", frozenset({"train/dog/02.png", "val/dog/leak.png"})),
        ("near", "perceptual", "across splits", frozenset({"train/fox/02.png",
                                                           "val/fox/leak.jpg"})),
        ("exact", "bytes", "across classes", frozenset({"train/cat/03.png", f"train/dog/{EVIL}"})),
    }
    assert report.failed
    assert [g.fails for g in report.groups] == [True] * 3 + [False] * 3  # failing ones first
    # Counts, balance and what the files are.
    counts = report.counts()
    assert counts["train"] == {"cat": 6, "dog": 7, "fox": 6}  # broken.png is not counted
    assert counts["validation"] == {"cat": 2, "dog": 3, "fox": 3}
    assert report.imbalance()["train"] == pytest.approx(7 / 6)
    assert [(Path(f.path).name, f.split) for f in report.unreadable] == [("broken.png", "train")]
    assert [Path(p).name for p, _ in report.ignored] == ["notes.txt"]
    s = report.summary()
    assert s["modes"] == {"RGB": 26, "L": 1} and s["bits"] == {"8": 27}
    assert s["formats"] == {"PNG": 25, "BMP": 1, "JPEG": 1}
    assert s["sizes"] == {"96×96": 26, "72×72": 1}


def test_a_clean_folder_passes_and_within_class_near_duplicates_do_not_fail(tmp_path: Path):
    root = clean_folder(tmp_path / "data", seed=1)
    report = audit(root, cache_dir=tmp_path / "cache")
    assert report.groups == [] and not report.failed
    im = Image.open(root / "train/dog/00.png")
    jpeg(im.resize((48, 48), Image.Resampling.LANCZOS), 70).save(root / "train/dog/00-half.jpg")
    again = audit(root, cache_dir=tmp_path / "cache")
    assert [(g.kind, g.scope) for g in again.groups] == [("near", "within class")]
    assert not again.failed


def test_val_option_is_checked_against_data(planted: Path, tmp_path: Path):
    report = audit(planted / "train", val=planted / "val", cache_dir=tmp_path / "cache")
    assert report.splits == ["train", "validation"]
    leaks = [g for g in report.groups if g.scope == "across splits"]
    assert {frozenset(Path(report.files[i].path).name for i in g.members) for g in leaks} == {
        frozenset({"02.png", "leak.png"}), frozenset({"02.png", "leak.jpg"})}


def test_a_second_audit_reads_the_fingerprints_from_the_cache(planted: Path, tmp_path: Path,
                                                              monkeypatch):
    first = audit(planted, cache_dir=tmp_path / "cache")
    import vitcli.data.audit

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(vitcli.data.audit, "_read_one", fail)
    second = audit(planted, cache_dir=tmp_path / "cache")
    assert second.to_dict() == first.to_dict()


def test_cli_exit_codes_contact_sheets_json_and_escaped_names(planted: Path, tmp_path: Path,
                                                              monkeypatch):
    from vitcli.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    out, js = tmp_path / "out", tmp_path / "audit.json"
    result = CliRunner().invoke(app, ["audit", str(planted), "--out", str(out), "--json",
                                      str(js), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.stdout and "evil\\x1b[2J[bold red]x.png" in result.stdout
    assert "failed" in result.stdout and "across classes" in result.stdout
    data = json.loads(js.read_text())
    assert data == json.loads((out / "audit.json").read_text())
    assert not data["clean"] and len(data["groups"]) == 6
    names = {Path(f["path"]).name for g in data["groups"] for f in g["files"]}
    assert EVIL in names and LATIN1 in names  # exact: not escaped, not re-encoded
    for group in data["groups"]:
        sheet = Image.open(out / group["contact_sheet"])
        assert sheet.format == "PNG" and sheet.width >= 2 * 160
    assert len(list((out / "groups").glob("*.png"))) == 6
    md = (out / "report.md").read_text()
    assert "**FAILED**" in md and "\x1b" not in md and "&lt;" not in md.split("evil")[0][-5:]
    assert "](groups/group-001.png)" in md
    # files listed relative to the audited folder, as in the terminal (not absolute paths)
    members = [line for line in md.splitlines() if line.startswith("- <code>")]
    assert members and not any(str(planted) in line for line in members), members

    clean = clean_folder(tmp_path / "clean", seed=2)
    ok = CliRunner().invoke(app, ["audit", str(clean), "--out", str(tmp_path / "out2"),
                                  "--cache-dir", str(tmp_path / "cache")])
    assert ok.exit_code == 0, ok.output
    assert "clean" in ok.stdout and not list((tmp_path / "out2").glob("groups/*.png"))
    # no groups: no sheets and no groups/ folder, so none is pointed at ('0 contact sheets in
    # out2/groups' named a folder that was never made)
    assert not (tmp_path / "out2" / "groups").exists()
    assert "0 contact sheets" not in ok.stdout and "groups" + os.sep not in ok.stdout
    assert "no duplicate groups, no contact sheets" in " ".join(ok.stdout.split())
    assert f"6 contact sheets in {out / 'groups'}" in " ".join(result.stdout.split())
    # the summary breaks between facts ("bits 8 / 600" once wrapped inside one)
    facts = next(line for line in ok.stdout.splitlines() if line.startswith("colour modes"))
    assert "; bit depths 8-bit " in facts


def test_cli_mistakes_are_one_line(tmp_path: Path):
    from vitcli.cli import app

    missing = CliRunner().invoke(app, ["audit", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "no such folder" in missing.output
    assert "Traceback" not in missing.output
    (tmp_path / "file").write_text("x")
    clean = clean_folder(tmp_path / "clean")
    as_file = CliRunner().invoke(app, ["audit", str(clean), "--out", str(tmp_path / "file")])
    assert as_file.exit_code == 2 and "is a file" in as_file.output


# --------------------------------------------------------------- the perceptual hashes


def test_hashes_match_edited_copies_and_tell_distinct_images_apart():
    rng = np.random.default_rng(5)
    images = [distinct_image(rng) for _ in range(40)]
    hashes = np.array([[dhash(im), phash(im)] for im in images], np.uint64)
    thumbs = np.stack([thumbnail(im) for im in images])
    for im, h, t in zip(images[:10], hashes, thumbs, strict=False):
        for edited in (jpeg(im, 60), im.resize((48, 48), Image.Resampling.LANCZOS),
                       im.resize((192, 192), Image.Resampling.BICUBIC),
                       ImageEnhance.Brightness(im).enhance(1.15)):
            d = hamming(h, np.array([dhash(edited), phash(edited)], np.uint64))
            assert d.max() <= NEAR_HASH_BITS, d
            assert thumbnail_cosine(t[None], thumbnail(edited)[None])[0] >= NEAR_THUMB_COSINE
    iu = np.triu_indices(len(images), 1)
    apart = np.maximum(hamming(hashes[:, None, 0], hashes[None, :, 0]),
                       hamming(hashes[:, None, 1], hashes[None, :, 1]))[iu]
    assert apart.min() > NEAR_HASH_BITS  # 780 pairs of distinct images: none near


@pytest.mark.slow
def test_train_warns_in_one_line_about_copies_across_splits_and_labels(tmp_path: Path):
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    root = clean_folder(tmp_path / "data", per_class=4)
    shutil.copy(root / "train/dog/00.png", root / "val/dog/copy.png")
    shutil.copy(root / "train/cat/01.png", root / "train/fox/01-as-fox.png")
    events: list[tuple] = []
    train(TrainOptions(data=str(root), project=str(tmp_path / "runs"), img_size=32, patch=16,
                       depth=1, embed_dim=16, heads=1, mlp_ratio=1.0, batch_size=4, epochs=1,
                       device="cpu", cache_dir=str(tmp_path / "cache")),
          on_event=lambda kind, **f: events.append((kind, f.get("level"), f.get("text"))))
    lines = [text for kind, level, text in events if level == "warning" and "audit" in text]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "1 validation image is byte-identical" in lines[0]
    assert "1 image is stored under two labels" in lines[0]
    assert f"vit audit {root}" in lines[0]


def test_a_recoloured_copy_is_not_a_near_duplicate(tmp_path: Path):
    """The same picture with its colours swapped keeps every grey-level hash and fails the
    colour check: two blue and green circles in one place are two images."""
    from vitcli.data.duplicates import NEAR_CHROMA
    from vitcli.data.perceptual import chroma_distance, colour_thumbnail

    im = distinct_image(np.random.default_rng(9))
    swapped = Image.merge("RGB", im.split()[::-1])  # RGB → BGR
    brighter = ImageEnhance.Brightness(im).enhance(1.15)
    assert chroma_distance(colour_thumbnail(im)[None], colour_thumbnail(swapped)[None])[0] \
        > NEAR_CHROMA
    assert chroma_distance(colour_thumbnail(im)[None], colour_thumbnail(brighter)[None])[0] \
        <= NEAR_CHROMA
    root = clean_folder(tmp_path / "data", per_class=3, seed=3)
    Image.merge("RGB", Image.open(root / "train/dog/01.png").split()[::-1]).save(
        root / "val/dog/01-bgr.png")
    ImageEnhance.Brightness(Image.open(root / "train/dog/02.png")).enhance(0.85).save(
        root / "val/dog/02-darker.png")
    report = audit(root, cache_dir=tmp_path / "cache")
    assert [sorted(Path(report.files[i].path).name for i in g.members)
            for g in report.groups] == [["02-darker.png", "02.png"]]


def test_model_features_group_look_alikes_without_failing(planted: Path, tmp_path: Path,
                                                         tiny_model_file: Path, monkeypatch):
    from vitcli.cli import app
    from vitcli.evaluation.features import image_features, similar_pairs

    unit = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    assert similar_pairs(unit, 0.99).tolist() == [[0, 1]]  # cos 0.999; the third is at 0.04
    files = sorted(str(p) for p in (planted / "train" / "fox").glob("*.png"))
    feats = image_features(tiny_model_file, files, device="cpu", cache_dir=tmp_path / "c")
    assert feats.shape == (len(files), 32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)

    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "out"
    args = ["audit", str(planted), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
            "--model", str(tiny_model_file), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the planted leakage, not the model's groups
    data = json.loads((out / "audit.json").read_text())
    assert data["thresholds"]["model_cosine"] == 0.99
    model = [g for g in data["groups"] if g["kind"] == "model"]
    assert all(not g["fails"] and g["match"] == "features" for g in model)
    assert len(data["groups"]) == 6 + len(model)  # the planted groups are all still there
    # the summary counts copies and look-alikes apart, matching the groups it lists
    lines = result.stdout.splitlines()
    at = next(i for i, x in enumerate(lines) if "duplicate group" in x)
    assert lines[at].startswith("6 duplicate groups, ")
    if model:  # on a line of its own: each whole at 80 columns
        assert lines[at].endswith(";") and lines[at + 1].startswith(
            f"{len(model)} look-alike group")
        assert max(len(x) for x in lines[at:at + 2]) <= 80
    clean = clean_folder(tmp_path / "clean", seed=4)
    ok = CliRunner().invoke(app, ["audit", str(clean), "--out", str(tmp_path / "o2"), "--model",
                                  str(tiny_model_file), "--device", "cpu", "--cache-dir",
                                  str(tmp_path / "c")])
    assert ok.exit_code == 0, ok.output


def test_near_groups_do_not_chain_and_never_hide_a_leak():
    from vitcli.data.duplicates import FileRecord, near_groups

    splits = ["train", "train", "train", "validation", "validation"]
    files = [FileRecord(path=f"{i}.png", split=s, label="cat") for i, s in enumerate(splits)]
    chain = [(0, 1), (1, 2), (2, 3), (3, 4)]  # look-alikes in a row: 0 and 4 are not alike
    groups = near_groups(files, chain)
    # Every member is a near-duplicate of its group's first file (1, then 3); 2~3 crosses the splits and
    # was split between two groups, so it is reported on its own.
    assert groups == [[1, 0, 2], [3, 4], [2, 3]]


def test_the_training_copies_line_names_files_within_the_data_folder(tmp_path: Path, monkeypatch):
    """`vit train`'s one-line warning about copies named /abs/path/data/val/dog/copy.png: it
    names them as `vit eval` and `vit audit` do, relative to the --data folder given."""
    from vitcli.data.duplicates import ByteConflicts

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    line = ByteConflicts(leaked=[(str(root / "val/dog/copy.png"), str(root / "train/dog/00.png"))],
                         two_labels=[("/elsewhere/a.png", str(root / "train/cat/a.png"))]
                         ).line("data") or ""
    assert "(first: val/dog/copy.png = train/dog/00.png)" in line
    assert "(first: /elsewhere/a.png = train/cat/a.png)" in line  # outside: as given
    assert str(tmp_path) not in line


def test_cli_lists_group_members_relative_to_the_folder_given(planted: Path, tmp_path: Path,
                                                              monkeypatch):
    from vitcli.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(planted.parent)
    result = CliRunner().invoke(app, ["audit", planted.name, "--out", str(tmp_path / "o"),
                                      "--cache-dir", str(tmp_path / "cache")])
    members = [line for line in result.stdout.splitlines() if line.startswith("   ") and " · " in line]
    assert members and all(line.split(" · ")[-1].startswith(("train/", "val/")) for line in members)


def test_the_last_line_says_where_the_sheets_are_or_that_there_are_none():
    from vitcli.commands.audit import _sheets_words

    assert _sheets_words(0, 0, Path("o/groups")) == "no duplicate groups, no contact sheets"
    assert _sheets_words(1, 1, Path("o/groups")) == "1 contact sheet in [bold]o/groups[/]"
    assert _sheets_words(200, 250, Path("o/groups")).endswith("(the first 200 of 250 groups)")


def test_an_empty_class_folder_is_a_finding_and_the_rest_is_audited(tmp_path: Path):
    """`vit audit` refused a data set with one empty class folder ('class 'x' has no image
    files'): it now names it, in the words `vit train` refuses it with, and audits the rest."""
    from vitcli.cli import app
    from vitcli.data.discovery import empty_class_words

    root = clean_folder(tmp_path / "data")
    (root / "train" / "owl").mkdir()  # empty
    (root / "val" / "owl" / "deep").mkdir(parents=True)  # empty at any depth
    (root / "val" / "owl" / "notes.txt").write_text("to do")
    report = audit(root, cache_dir=tmp_path / "cache")
    assert [(e.split, e.name) for e in report.empty_classes] == [("train", "owl"),
                                                                 ("validation", "owl")]
    assert report.class_names == CLASSES and len(report.readable) == 3 * 5 + 3 * 2
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", str(root), "--out", str(out), "--cache-dir",
                                      str(tmp_path / "cache")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output  # reported, not failing
    fact = empty_class_words("owl")
    assert fact == "class 'owl' has no image files"
    lines = result.stdout.splitlines()
    assert f"warning: train/owl: {fact}" in lines and f"warning: val/owl: {fact}" in lines
    assert ("vit train refuses empty class folders: add images to them or remove them"
            in lines)
    md = (out / "report.md").read_text()
    assert "## Empty class folders (2)" in md and f"<code>train/owl</code>: {fact}" in md
    data = json.loads((out / "audit.json").read_text())
    assert [(e["split"], e["class"]) for e in data["empty_classes"]] == [
        ("train", "owl"), ("validation", "owl")]
    # vit train refuses the same folder, saying the same fact
    train = CliRunner().invoke(app, ["train", "--data", str(root), "--epochs", "1",
                                     "--project", str(tmp_path / "runs")])
    assert train.exit_code == 1 and "Traceback" not in train.output
    assert train.stderr.strip() == (f"error: {root / 'train' / 'owl'}: {fact}; "
                                    "add images to it or remove it")


def test_an_audit_refuses_only_when_there_is_nothing_to_audit(tmp_path: Path):
    from vitcli.cli import app

    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "train" / "cat" / "a.png")
    report = audit(root, cache_dir=tmp_path / "cache")  # one image: something to audit
    assert len(report.files) == 1 and report.splits == ["train"]
    assert len(report.empty_classes) == 5
    (root / "train" / "cat" / "a.png").unlink()
    result = CliRunner().invoke(app, ["audit", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "no image files in its class sub-folders" \
        in result.stderr
