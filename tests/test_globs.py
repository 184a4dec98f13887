"""Include/exclude globs: a path glob is relative to where it was set (a rule file's directory,
or the folder root for `defaults` and `folders[].rules`); a bare-name glob matches at any depth."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_rules import rule_file, settings_for
from watchd.rules import RuleResolver


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    return tmp_path / "photos"


def resolver_for(tmp_path: Path, photos: Path, folder_rules: str = "{}") -> RuleResolver:
    body = f"defaults: {{host: me}}\nfolders: [{{path: {photos}, rules: {folder_rules}}}]\n"
    return RuleResolver(settings_for(tmp_path, body))


def test_rule_file_globs_are_relative_to_its_directory(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos)
    rule_file(photos / "album", 'exclude: ["raw/", "drafts/*.png"]\n')

    assert not resolver.is_candidate(photos / "album" / "raw" / "x.png")
    assert not resolver.is_candidate(photos / "album" / "raw" / "deep" / "x.png")
    assert not resolver.is_candidate(photos / "album" / "drafts" / "x.png")
    assert resolver.is_candidate(photos / "album" / "drafts" / "x.jpg")
    assert resolver.is_candidate(photos / "album" / "keep.png")
    assert resolver.is_candidate(photos / "album" / "sub" / "raw" / "x.png")  # raw/ is album/raw/ only
    assert resolver.is_candidate(photos / "raw" / "x.png")  # above the rule file: not its business


def test_rule_file_include_is_relative_to_its_directory(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos)
    rule_file(photos / "album", "include: ['pngs/*.png', '*.gif']\n")

    assert resolver.is_candidate(photos / "album" / "pngs" / "a.png")
    assert not resolver.is_candidate(photos / "album" / "a.png")
    assert resolver.is_candidate(photos / "album" / "x" / "y.gif")
    assert resolver.is_candidate(photos / "a.png")  # the folder's own include: everything


def test_globs_inherited_below_another_rule_file_stay_relative_to_theirs(
    tmp_path: Path, photos: Path
) -> None:
    resolver = resolver_for(tmp_path, photos)
    rule_file(photos / "album", 'exclude: ["raw/"]\n')
    rule_file(photos / "album" / "raw" / "best", "title: 'best {stem}'\n")  # sets no globs
    rule_file(photos / "album" / "sub", "tags: [sub]\n")

    assert resolver.rules_for(photos / "album" / "raw" / "best" / "x.png").exclude_base == "album"
    assert not resolver.is_candidate(photos / "album" / "raw" / "best" / "x.png")
    assert resolver.is_candidate(photos / "album" / "sub" / "raw" / "x.png")


def test_folder_rules_and_defaults_are_relative_to_the_folder_root(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos, folder_rules='{exclude: ["album/raw/"]}')
    rule_file(photos / "album", "title: 'album {stem}'\n")  # sets no globs: the folder's stay

    assert not resolver.is_candidate(photos / "album" / "raw" / "x.png")
    assert resolver.is_candidate(photos / "raw" / "x.png")
    assert resolver.is_candidate(photos / "album" / "x.png")


def test_include_and_exclude_each_remember_where_they_were_set(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos, folder_rules='{include: ["album/*"]}')
    rule_file(photos / "album" / "deep", 'exclude: ["raw/"]\n')

    rules = resolver.rules_for(photos / "album" / "deep" / "x.png")
    assert (rules.include_base, rules.exclude_base) == ("", "album/deep")
    assert resolver.is_candidate(photos / "album" / "deep" / "x.png")
    assert not resolver.is_candidate(photos / "album" / "deep" / "raw" / "x.png")
    assert not resolver.is_candidate(photos / "elsewhere" / "x.png")  # not included


def test_bare_name_globs_match_at_any_depth_below_their_rule_file(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos)
    rule_file(photos / "album", 'exclude: ["*.tmp.png", "IMG_*"]\n')

    assert not resolver.is_candidate(photos / "album" / "a" / "b" / "c.tmp.png")
    assert not resolver.is_candidate(photos / "album" / "x" / "img_0001.JPG")
    assert resolver.is_candidate(photos / "c.tmp.png")


def test_a_rule_file_at_the_folder_root_is_relative_to_the_root(tmp_path: Path, photos: Path) -> None:
    resolver = resolver_for(tmp_path, photos)
    rule_file(photos, 'exclude: ["raw/"]\n')

    assert resolver.rules_for(photos / "raw" / "x.png").exclude_base == ""
    assert not resolver.is_candidate(photos / "raw" / "x.png")
    assert resolver.is_candidate(photos / "album" / "raw" / "x.png")
