"""The rules cascade: defaults < folders[].rules < rule files, nearest wins key by key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from watchd.config import Settings, load_settings
from watchd.rules import RULE_FILE_NAME, EffectiveRules, RuleFileError, RuleResolver, describe

SECRET = "sk-rules-8d1e"


def settings_for(tmp_path: Path, body: str, *, baidu: bool = True) -> Settings:
    """Hosts `me` (account) and `guest`, optionally Baidu, then `body` (defaults and folders)."""
    head = f"""
        hosts:
          me: {{type: imageban, secret_key: {SECRET}}}
          guest: {{type: imageban, client_id: cid}}
        """
    if baidu:
        head += "baidu: {app_id: '1', app_token: tok}\n"
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(head) + textwrap.dedent(body), encoding="utf-8")
    config.chmod(0o600)
    return load_settings(config)


def rule_file(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RULE_FILE_NAME
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    return tmp_path / "photos"


def test_cascade_key_by_key_across_all_levels(tmp_path: Path, photos: Path) -> None:
    settings = settings_for(
        tmp_path,
        f"""
        defaults:
          host: me
          tags: [default]
          title: "default {{stem}}"
          copyright: true
          sidecar: {{format: md}}
        folders:
          - path: {photos}
            rules:
              album: folder-album
              title: "folder {{stem}}"
        """,
    )
    rule_file(photos, "tags: [top]\nsidecar: {name: '{stem}.top.md'}\n")
    rule_file(photos / "a" / "b", "title: 'deep {name}'\ncopyright: false\nsidecar: {format: txt}\n")
    resolver = RuleResolver(settings)

    assert resolver.rules_for(photos / "a" / "b" / "c" / "x.png") == EffectiveRules(
        host="me",  # defaults
        album="folder-album",  # folder rules
        tags=("top",),  # top rule file
        copyright=False,  # nearest rule file
        title="deep {name}",  # nearest rule file beats folder and defaults
        fromurl="{short_link}",  # built-in
        baidu=True,  # built-in: Baidu is configured
        sidecar_format="txt",  # nearest rule file ...
        sidecar_name="{stem}.top.md",  # ... merged with the top one by sub-key
    )
    above = resolver.rules_for(photos / "a" / "x.png")
    assert (above.title, above.copyright, above.sidecar_format, above.tags) == (
        "folder {stem}",
        True,
        "md",
        ("top",),
    )
    assert resolver.rules_for(photos / "x.png").sidecar_name == "{stem}.top.md"


def test_built_in_defaults_and_single_host(tmp_path: Path, photos: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"hosts: {{solo: {{type: imageban, client_id: c}}}}\nfolders: [{{path: {photos}}}]\n")
    rules = RuleResolver(load_settings(config)).rules_for(photos / "x.png")
    assert rules == EffectiveRules(host="solo", baidu=False)
    assert (rules.include, rules.sidecar_format, rules.sidecar_name) == (("*",), "json", "{name}.link.json")


def test_baidu_flag_needs_baidu_configured(tmp_path: Path, photos: Path) -> None:
    body = f"defaults: {{host: me, baidu: true}}\nfolders: [{{path: {photos}}}]\n"
    assert RuleResolver(settings_for(tmp_path, body, baidu=False)).rules_for(photos / "x.png").baidu is False
    assert RuleResolver(settings_for(tmp_path, body)).rules_for(photos / "x.png").baidu is True
    off = body.replace("baidu: true", "baidu: false")
    assert RuleResolver(settings_for(tmp_path, off)).rules_for(photos / "x.png").baidu is False


def test_rule_file_edit_takes_effect_without_restart(tmp_path: Path, photos: Path) -> None:
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    path = rule_file(photos, "title: 'first {stem}'\n")
    assert resolver.rules_for(photos / "x.png").title == "first {stem}"

    path.write_text("title: 'second edit {stem}'\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert resolver.rules_for(photos / "x.png").title == "second edit {stem}"

    path.unlink()
    assert resolver.rules_for(photos / "x.png").title == "{stem}"


def test_same_size_same_mtime_edit_needs_invalidate(tmp_path: Path, photos: Path) -> None:
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    path = rule_file(photos, "title: 'AAAA {stem}'\n")
    assert resolver.rules_for(photos / "x.png").title == "AAAA {stem}"
    before = path.stat()
    path.write_text("title: 'BBBB {stem}'\n", encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert resolver.rules_for(photos / "x.png").title == "AAAA {stem}"  # cached: nothing changed visibly
    resolver.invalidate(photos)
    assert resolver.rules_for(photos / "x.png").title == "BBBB {stem}"


def test_rules_resolved_for_a_directory_follow_every_rule_file_above_it(tmp_path: Path, photos: Path) -> None:
    """A directory's merged rules are kept; a rule file appearing, changing or going at any
    level above it makes them be merged again, and `invalidate` of a rule file forgets them."""
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    deep = photos / "2024" / "june"
    deep.mkdir(parents=True)
    image = deep / "x.png"
    assert resolver.rules_for(image).title == "{stem}"

    top = rule_file(photos, "title: 'top {stem}'\ntags: [a]\n")
    assert (resolver.rules_for(image).title, resolver.rules_for(image).tags) == ("top {stem}", ("a",))
    middle = rule_file(photos / "2024", "title: 'middle {stem}'\n")
    assert (resolver.rules_for(image).title, resolver.rules_for(image).tags) == ("middle {stem}", ("a",))
    top.write_text("tags: [a, b]\n", encoding="utf-8")
    assert resolver.rules_for(image).tags == ("a", "b")
    middle.unlink()
    assert resolver.rules_for(image).title == "{stem}"

    before = top.stat()
    top.write_text("tags: [c, d]\n", encoding="utf-8")  # same size, same mtime: unseen until told
    os.utime(top, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert resolver.rules_for(image).tags == ("a", "b")
    resolver.invalidate(top)
    assert resolver.rules_for(image).tags == ("c", "d")


def test_broken_rule_file_names_file_and_line(tmp_path: Path, photos: Path) -> None:
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    broken = rule_file(photos / "sub", "tags: [a]\ntitel: x\nhost: nobody\n")

    with pytest.raises(RuleFileError) as info:
        resolver.rules_for(photos / "sub" / "deeper" / "x.png")
    assert info.value.rule_file == broken
    assert info.value.problems == [
        f"{broken}:2: titel: unknown key — did you mean 'title'? (remove or rename it)",
        f"{broken}:3: host: unknown host 'nobody': use one of the configured hosts (me, guest)",
    ]
    assert resolver.rules_for(photos / "x.png").host == "me"  # files above it are fine
    with pytest.raises(RuleFileError):
        resolver.is_candidate(photos / "sub" / "x.png")

    broken.write_text("tags: [a]\ntitle: x\n", encoding="utf-8")
    os.utime(broken, ns=(0, broken.stat().st_mtime_ns + 1_000_000))
    assert resolver.rules_for(photos / "sub" / "x.png").title == "x"


def test_bad_yaml_in_rule_file(tmp_path: Path, photos: Path) -> None:
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    broken = rule_file(photos, "tags: [a\ntitle: x\n")
    with pytest.raises(RuleFileError) as info:
        resolver.rules_for(photos / "x.png")
    (problem,) = info.value.problems
    assert problem.startswith(f"{broken}:2:") and "bad YAML" in problem
    assert str(broken) in str(info.value)


def test_rule_files_get_no_environment_interpolation(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_SECRET", "leaked")
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    broken = rule_file(photos, "album: ${SOME_SECRET}\ntags: [a]\ntitle: '${HOME} {stem}, ${stem}'\n")
    with pytest.raises(RuleFileError) as info:
        resolver.rules_for(photos / "x.png")
    assert info.value.problems == [  # said as such, not as an unknown placeholder {HOME}
        f"{broken}:1: album: ${{SOME_SECRET}}: environment variables are replaced only in the main config, "
        "not in rule files: write the value itself here (or set the key in the main config)",
        f"{broken}:3: title: ${{HOME}}: environment variables are replaced only in the main config, "
        "not in rule files: write the value itself here (or set the key in the main config)",
    ]
    assert "leaked" not in str(info.value)
    rule_file(photos, "title: 'costs ${stem}'\n")  # a "$" before a placeholder is still just that
    assert resolver.rules_for(photos / "x.png").title == "costs ${stem}"


def test_album_with_guest_host_in_rule_file(tmp_path: Path, photos: Path) -> None:
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {photos}}}]\n")
    )
    rule_file(photos, "album: abc\n")
    assert resolver.rules_for(photos / "x.png").album == "abc"
    guest = rule_file(photos / "g", "host: guest\n")
    with pytest.raises(RuleFileError) as info:
        resolver.rules_for(photos / "g" / "x.png")
    assert info.value.rule_file == guest and "album needs an account host" in str(info.value)


def test_folder_for_respects_recursive(tmp_path: Path) -> None:
    deep, flat = tmp_path / "deep", tmp_path / "flat"
    settings = settings_for(
        tmp_path,
        f"defaults: {{host: me}}\nfolders: [{{path: {deep}}}, {{path: {flat}, recursive: false}}]\n",
    )
    resolver = RuleResolver(settings)
    assert resolver.folder_for(deep / "a" / "b" / "x.png") is settings.folders[0]
    assert resolver.folder_for(flat / "x.png") is settings.folders[1]
    assert resolver.folder_for(flat / "sub" / "x.png") is None
    assert resolver.folder_for(tmp_path / "x.png") is None
    assert resolver.folder_for(deep) is None
    assert resolver.is_candidate(tmp_path / "elsewhere" / "x.png") is False
    assert resolver.rules_for(tmp_path / "elsewhere" / "x.png").host == "me"  # outside: the defaults


def test_non_recursive_folder_reads_only_its_own_rule_file(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    resolver = RuleResolver(
        settings_for(tmp_path, f"defaults: {{host: me}}\nfolders: [{{path: {flat}, recursive: false}}]\n")
    )
    rule_file(flat, "tags: [flat]\n")
    assert resolver.rules_for(flat / "x.png").tags == ("flat",)


def test_selects_says_whether_a_directory_may_leave_files_out(tmp_path: Path, photos: Path) -> None:
    settings = settings_for(tmp_path, f"defaults: {{host: me}}\nfolders:\n  - path: {photos}\n")
    resolver = RuleResolver(settings)
    assert not resolver.selects(photos / "a.png")
    rule_file(photos / "raw", "exclude: ['*.png']\n")
    rule_file(photos / "gifs", "include: ['*.gif']\n")
    assert resolver.selects(photos / "raw" / "a.png") and resolver.selects(photos / "gifs" / "a.png")
    assert resolver.selects(photos / "raw" / "deeper" / "a.png")  # inherited
    assert not resolver.selects(photos / "other" / "a.png")


def test_include_and_exclude(tmp_path: Path, photos: Path) -> None:
    settings = settings_for(
        tmp_path,
        f"""
        defaults: {{host: me}}
        folders:
          - path: {photos}
            rules: {{include: ["*.png", "*.jpg"], exclude: ["raw/**", "drafts/", "*_tmp.*"]}}
        """,
    )
    resolver = RuleResolver(settings)
    assert resolver.is_candidate(photos / "a.png")
    assert resolver.is_candidate(photos / "deep" / "IMG_0001.JPG")  # case-insensitive
    assert not resolver.is_candidate(photos / "a.gif")  # not included
    assert not resolver.is_candidate(photos / "raw" / "a.png")  # relative path glob
    assert not resolver.is_candidate(photos / "raw" / "x" / "a.png")
    assert not resolver.is_candidate(photos / "drafts" / "a.png")  # directory pattern
    assert not resolver.is_candidate(photos / "b_tmp.png")  # bare name glob
    assert resolver.is_candidate(photos / "rawness" / "a.png")

    rule_file(photos / "gifs", "include: ['*.gif']\n")
    assert resolver.is_candidate(photos / "gifs" / "a.gif")
    assert not resolver.is_candidate(photos / "gifs" / "a.png")


def test_describe_shows_rules_per_folder_and_rule_file(tmp_path: Path, photos: Path) -> None:
    missing = tmp_path / "not-yet"
    settings = settings_for(
        tmp_path,
        f"""
        defaults: {{host: me, tags: [nature]}}
        folders:
          - path: {photos}
          - path: {missing}
            rules: {{host: guest}}
        """,
    )
    rule_file(photos / "sub", "title: 'sub {stem}'\n")
    broken = rule_file(photos / "zzz", "titel: x\n")

    text, problems = describe(settings)

    assert problems == [f"{broken}:1: titel: unknown key — did you mean 'title'? (remove or rename it)"]
    assert "me: imageban, account auth (secret key)" in text
    assert "guest: imageban, guest auth (client id)" in text
    assert f"folder {photos} (recursive, watch: auto)" in text
    assert f"{photos / 'sub'}/ (with {RULE_FILE_NAME})" in text
    assert "title: 'sub {stem}'" in text and "tags: nature" in text
    assert f"BROKEN, files below are not uploaded: {broken}:1: titel: unknown key" in text
    assert f"folder {missing}" in text and "unavailable now" in text and "host: guest (guest)" in text
    assert SECRET not in text and "cid" not in text and "tok" not in text


def test_describe_shows_api_addresses_without_their_login_or_query(tmp_path: Path) -> None:
    body = f"defaults: {{host: me}}\nfolders:\n  - path: {tmp_path}\n"
    settings = settings_for(tmp_path, body, baidu=False)
    host = settings.hosts["me"].model_copy(
        update={"api_url": "https://gate:pa55@img.example/api?key=qk-77#x"}
    )
    settings = settings.model_copy(update={"hosts": {**settings.hosts, "me": host}})

    text, _problems = describe(settings)

    assert "https://img.example/api," in text
    assert "pa55" not in text and "qk-77" not in text and "gate" not in text


def test_a_rule_file_turning_baidu_on_without_a_baidu_section_is_warned_of_once_each_time_it_is_read(
    tmp_path: Path, photos: Path
) -> None:
    settings = settings_for(tmp_path, f"defaults: {{host: me}}\nfolders:\n  - path: {photos}\n", baidu=False)
    rules = rule_file(photos / "sub", "tags: [a]\nbaidu: true\n")
    heard: list[str] = []
    resolver = RuleResolver(settings, warn=heard.append)

    assert not resolver.rules_for(photos / "sub" / "a.png").baidu  # nothing to submit to
    resolver.rules_for(photos / "sub" / "b.png")
    assert len(heard) == 1 and heard[0].startswith(f"{rules}:2: baidu: is true, but ")
    assert "has no baidu: section" in heard[0]

    os.utime(rules, ns=(1, 1))  # edited: read again, and said again
    resolver.rules_for(photos / "sub" / "a.png")
    assert len(heard) == 2

    configured = settings_for(tmp_path, f"defaults: {{host: me}}\nfolders:\n  - path: {photos}\n")
    quiet: list[str] = []
    RuleResolver(configured, warn=quiet.append).rules_for(photos / "sub" / "a.png")
    assert quiet == []
