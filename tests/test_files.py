"""vitcli.files: how paths are shown in lists of images."""

from __future__ import annotations

import os
from pathlib import Path

from vitcli.files import shown_path


def test_a_listed_path_is_shown_relative_to_the_folder_the_user_gave(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = str(tmp_path / "imgs" / "val" / "cat" / "01.png")  # listings hold absolute paths
    for given in ("imgs/val", "./imgs/val/", "imgs/../imgs/val", str(tmp_path / "imgs/val")):
        assert shown_path(image, given) == os.path.join("cat", "01.png"), given
    assert shown_path(image, "imgs") == os.path.join("val", "cat", "01.png")
    assert shown_path(Path("imgs/val/cat/01.png"), tmp_path / "imgs") == \
        os.path.join("val", "cat", "01.png")  # a relative listing against an absolute folder


def test_a_path_outside_the_folder_or_no_folder_is_shown_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path("/elsewhere/a.png", "imgs") == "/elsewhere/a.png"
    assert shown_path(str(tmp_path / "imgs2/a.png"), "imgs") == str(tmp_path / "imgs2/a.png")
    assert shown_path("..odd/a.png", ".") == os.path.join("..odd", "a.png")  # not a parent
    assert shown_path("imgs", "imgs") == "imgs"  # the folder itself
    assert shown_path("/x/a.png", None) == "/x/a.png" and shown_path("/x/a.png", "") == "/x/a.png"


def test_a_folder_reached_through_a_link_still_shortens(tmp_path, monkeypatch):
    (tmp_path / "real" / "cat").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert shown_path(str(tmp_path / "real" / "cat" / "a.png"), "link") == \
        os.path.join("cat", "a.png")
