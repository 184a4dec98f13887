"""Loading, interpolating and validating the config file; every problem reported at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from watchd.config import default_config_path, default_state_dir, load_settings
from watchd.errors import ConfigError
from watchd.rules import describe

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
SECRET = "TOPSECRET-5f2c9a"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    path.chmod(0o600)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value.problems


MINIMAL = """\
hosts:
  me:
    type: imageban
    secret_key: ${TEST_KEY}
folders:
  - path: photos
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    for name in (
        "STATE_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "WATCHD_CONFIG",
        "XDG_STATE_HOME",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(name, raising=False)


# -- the example and the defaults ------------------------------------------------------------


def test_example_config_loads_with_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "IMAGEBAN_SECRET_KEY": "sk-example",
        "IMAGEBAN_CLIENT_ID": "cid-example",
        "BAIDU_APP_ID": "12345",
        "BAIDU_APP_TOKEN": "token-example",
    }.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"
    config.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace("/srv/photos", str(tmp_path)), encoding="utf-8"
    )
    config.chmod(0o600)
    (tmp_path / "public").mkdir()
    (tmp_path / "drafts").mkdir()

    settings = load_settings(config)

    assert settings.warnings == ()
    assert settings.config_path == config
    assert {name: host.auth for name, host in settings.hosts.items()} == {"me": "account", "guest": "guest"}
    assert (settings.hosts["me"].quota, settings.hosts["guest"].quota) == (1500, 1000)
    assert settings.baidu is not None and settings.baidu.app_id.get_secret_value() == "12345"
    assert [f.path for f in settings.folders] == [tmp_path / "public", tmp_path / "drafts"]
    assert settings.folders[1].rules.baidu is False
    assert sorted(settings.secrets()) == sorted(["sk-example", "cid-example", "12345", "token-example"])
    text, broken = describe(settings)
    assert str(tmp_path / "drafts") in text and "guest auth" in text and broken == []
    assert not any(secret in text for secret in settings.secrets())


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.state_dir == tmp_path / "xdg" / "watchd"
    assert settings.concurrency == 4 and settings.baidu is None
    assert settings.default_host == "me"
    host = settings.hosts["me"]
    assert (host.api_url, host.quota_reset_tz, host.timeout) == (
        "https://api.imageban.ru/v1",
        "Europe/Moscow",
        60.0,
    )
    folder = settings.folders[0]
    assert folder.path == tmp_path / "photos"  # relative to the config file; need not exist
    assert (folder.recursive, folder.poll, folder.poll_interval) == (True, None, None)


def test_state_dir_default_prefers_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_state_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "watchd"


def test_paths_expand_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load_settings(
        write(tmp_path, MINIMAL.replace("path: photos", "path: ~/pics") + "state_dir: ~/st\n")
    )
    assert settings.folders[0].path == tmp_path / "home" / "pics"
    assert settings.state_dir == tmp_path / "home" / "st"


def test_default_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if not Path("/etc/watchd/config.yaml").exists():  # then it would be the fallback
        assert default_config_path() == tmp_path / ".config" / "watchd" / "config.yaml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "watchd").mkdir(parents=True)
    (tmp_path / "xdg" / "watchd" / "config.yaml").touch()
    assert default_config_path() == tmp_path / "xdg" / "watchd" / "config.yaml"
    monkeypatch.setenv("WATCHD_CONFIG", str(tmp_path / "explicit.yaml"))
    assert default_config_path() == tmp_path / "explicit.yaml"


# -- problems: where, what, what to do --------------------------------------------------------


def test_unknown_key_names_line_and_suggests_the_right_one(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        hosts:
          me: {type: imageban, secret_key: "${TEST_KEY}"}
        folders:
          - path: a
          - path: b
            rules:
              titel: "{stem}"
        """,
    )
    assert problems_of(config) == [
        f"{config}:7: folders[1].rules.titel: unknown key — did you mean 'title'? (remove or rename it)"
    ]


def test_unknown_key_without_a_close_match_lists_the_known_keys(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL + "    zzz: 1\n"))
    assert ":7: folders[0].zzz: unknown key (remove it; known keys here: path, recursive, rules" in problem


def test_missing_environment_variable_is_named_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_KEY")
    config = write(tmp_path, MINIMAL)
    assert problems_of(config) == [
        f"{config}:4: hosts.me.secret_key: environment variable TEST_KEY is not set "
        "(set it, or use ${TEST_KEY:-…})"
    ]


def test_interpolation_defaults_and_literal_dollar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EMPTY", "")
    config = write(
        tmp_path,
        MINIMAL
        + "defaults:\n"
        + '  title: "${TEST_UNSET:-fallback} ${TEST_EMPTY:-was empty} {stem}"\n'
        + "  album: a${TEST_KEY}b $${HOME}\n",
    )
    rules = load_settings(config).defaults
    assert rules.title == "fallback was empty {stem}"
    assert rules.album == f"a{SECRET}b ${{HOME}}"


def test_bad_reference_is_a_problem(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL + "defaults: {title: '${1BAD} x'}\n"))
    assert ":7: defaults.title: a '${' that is not ${NAME}" in problem


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    config = write(tmp_path, "hosts:\n  me: [unclosed\nfolders: []\n")
    (problem,) = problems_of(config)
    assert problem.startswith(f"{config}:3:")
    assert "bad YAML" in problem and "fix the syntax" in problem and "\n" not in problem


def test_tab_indentation_reports_position(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "hosts:\n\tme: x\n"))
    assert ":2:1: bad YAML: found character '\\t' that cannot start any token" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_KEY")
    config = write(
        tmp_path,
        """
        concurrency: 100
        hosts:
          me:
            type: imageban
            secret_key: ${TEST_KEY}
            quota_reset_tz: Mars/Olympus
        defaults:
          host: nobody
          tags: [ok, "bad#tag"]
          title: "{stem} by {author}"
          copyright: maybe
        folders:
          - path: a
            rules: {sidecar: {format: pdf, name: "links.json"}}
          - path: b
            colour: red
        """,
    )
    problems = problems_of(config)
    expected = [
        ":1: concurrency: Input should be less than or equal to 64",
        ":5: hosts.me.secret_key: environment variable TEST_KEY is not set",
        ":6: hosts.me.quota_reset_tz: unknown time zone",
        ":8: defaults.host: unknown host 'nobody': use one of the configured hosts (me)",
        ":9: defaults.tags[1]: a tag cannot contain '#'",
        ":10: defaults.title: unknown placeholder {author}; known:",
        ":11: defaults.copyright: Input should be a valid boolean",
        ":14: folders[0].rules.sidecar.format: Input should be 'json', 'txt', 'md', 'bbcode' or 'html'",
        ":14: folders[0].rules.sidecar.name: must contain {name} or {stem}",
        ":16: folders[1].colour: unknown key",
    ]
    assert len(problems) == len(expected), problems
    for fragment in expected:
        assert any(f"{config}{fragment}" in problem for problem in problems), (fragment, problems)
    assert all("\n" not in problem for problem in problems)


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""
        concurrency: {SECRET}
        hosts:
          me: {{type: imageban, secret_key: {SECRET}, client_id: {SECRET}x}}
          other: {{type: imageban, client_id: [{SECRET}], secret_kee: {SECRET}}}
        baidu: {{app_id: {SECRET}, app_token: {{nested: {SECRET}}}, linger: {SECRET}}}
        defaults: {{host: me, copyright: {SECRET}}}
        folders:
          - path: a
            poll: {SECRET}
        """,
    )
    config.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert len(info.value.problems) >= 7
    assert SECRET not in str(info.value)
    assert not any(SECRET in problem for problem in info.value.problems)


def test_exactly_one_credential_per_host(tmp_path: Path) -> None:
    problems = problems_of(
        write(
            tmp_path,
            """
            hosts:
              both: {type: imageban, secret_key: a, client_id: b}
              none: {type: imageban}
            defaults: {host: both}
            folders: [{path: a}]
            """,
        )
    )
    assert len(problems) == 2
    assert all(
        "set exactly one of client_id (guest upload) or secret_key (account upload)" in p for p in problems
    )
    assert ":2: hosts.both:" in problems[0] and ":3: hosts.none:" in problems[1]


def test_cross_checks(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
        hosts:
          me: {type: imageban, secret_key: a}
          guest: {type: imageban, client_id: b}
        folders:
          - path: photos
          - path: photos/inner
          - path: ./photos
          - path: drafts
            rules: {host: guest, album: abc}
        """,
    )
    problems = problems_of(config)
    assert problems == [
        f"{config}:1: defaults.host: missing: choose one of me, guest",
        f"{config}:6: folders[1].path: nests with folders[0]: keep the outer one",
        f"{config}:7: folders[2].path: the same folder as folders[0]: remove one",
        f"{config}:7: folders[2].path: nests with folders[1]: keep the outer one",
        f"{config}:8: folders[3]: album needs an account host; 'guest' is a guest host",
    ]


def test_baidu_turned_on_without_a_baidu_section_is_named_wherever_it_is(tmp_path: Path) -> None:
    photos, flat = tmp_path / "photos", tmp_path / "flat"
    for directory in (photos / "sub", photos / ".hidden", flat / "sub"):
        directory.mkdir(parents=True)
    (photos / ".watchd.yaml").write_text("baidu: false\n", encoding="utf-8")
    (photos / "sub" / ".watchd.yaml").write_text("tags: [cats]\nbaidu: true\n", encoding="utf-8")
    (photos / ".hidden" / ".watchd.yaml").write_text("baidu: true\n", encoding="utf-8")  # nothing published
    (flat / "sub" / ".watchd.yaml").write_text("baidu: true\n", encoding="utf-8")  # flat is not recursive
    text = """
        hosts:
          me: {type: imageban, secret_key: a}
        defaults:
          baidu: true
        folders:
          - path: photos
          - path: flat
            recursive: false
            rules: {baidu: true}
        """
    config = write(tmp_path, text)
    _report, problems = describe(load_settings(config))
    assert [problem.split(", so ")[0] for problem in problems] == [
        f"{config}:4: defaults.baidu: is true, but this file has no baidu: section",
        f"{config}:9: folders[1].rules.baidu: is true, but this file has no baidu: section",
        f"{photos / 'sub' / '.watchd.yaml'}:2: baidu: is true, but {config} has no baidu: section",
    ]
    assert all("add one with app_id and app_token" in problem for problem in problems)
    configured = write(tmp_path, text + "baidu: {app_id: a, app_token: b}\n")
    assert describe(load_settings(configured))[1] == []


def test_required_sections(tmp_path: Path) -> None:
    config = write(tmp_path, "# nothing yet\n")
    assert problems_of(config) == [
        f"{config}:1: hosts: required key is missing (add it)",
        f"{config}:1: folders: required key is missing (add it)",
    ]
    (problem,) = problems_of(write(tmp_path, "- a\n- b\n"))
    assert (
        problem
        == f"{config}:1: the file must be a mapping of keys (state_dir:, hosts:, baidu:, defaults:, folders:)"
    )
    (problem,) = problems_of(write(tmp_path, MINIMAL.replace("folders:\n  - path: photos", "folders: []")))
    assert problem == f"{config}:5: folders: List should have at least 1 item after validation, not 0"


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL + "concurrency: 2\nconcurrency: 3\n"))
    assert ":7: concurrency: duplicate key" in problem


def test_value_ranges(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        MINIMAL + "baidu: {app_id: 1, app_token: t, linger: 2, api_base: ftp://x}\n" + "concurrency: 0\n",
    )
    problems = problems_of(config)
    assert any(":7: baidu.linger: Input should be less than or equal to 1" in p for p in problems)
    assert any(":7: baidu.api_base: must be an http:// or https:// URL" in p for p in problems)
    assert any(":8: concurrency: Input should be greater than or equal to 1" in p for p in problems)


@pytest.mark.parametrize("word", ["true", "yes", "on", "off"])
def test_a_yaml_boolean_is_no_number(tmp_path: Path, word: str) -> None:
    config = write(
        tmp_path,
        f"""
        concurrency: {word}
        settle: {word}
        rescan_interval: {word}
        delete_guard: {{max_files: {word}}}
        hosts:
          me: {{type: imageban, secret_key: k, timeout: {word}, daily_quota: {word}}}
        folders: [{{path: photos}}]
        """,
    )
    keys = ["hosts.me.daily_quota", "hosts.me.timeout", "concurrency", "settle", "rescan_interval"]
    keys.append("delete_guard.max_files")
    problems = problems_of(config)
    assert len(problems) == len(keys), problems
    for key in keys:
        assert any(f": {key}: must be a number, not true or false" in p for p in problems), (key, problems)
    assert load_settings(write(tmp_path, MINIMAL + "settle: 2\nrescan_interval: 0\n")).settle == 2.0


def test_retry_initial_above_maximum(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL + "retry:\n  initial: 5\n  maximum: 2\n  requeue_initial: 9000\n")
    assert problems_of(config) == [
        f"{config}:8: retry.initial: is above retry.maximum: lower initial or raise maximum",
        f"{config}:10: retry.requeue_initial: is above retry.requeue_maximum: "
        "lower requeue_initial or raise requeue_maximum",
    ]


def test_a_folder_path_that_is_a_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "photos").write_bytes(b"not a folder")
    config = write(tmp_path, MINIMAL)
    assert problems_of(config) == [
        f"{config}:6: folders[0].path: exists and is not a directory: name the folder that holds the images"
    ]
    (tmp_path / "photos").unlink()
    assert load_settings(config).folders[0].path == tmp_path / "photos"  # missing: watched once it appears


def test_empty_defaults_section_is_allowed(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL + "defaults:\n  # host: me\n"))
    assert settings.defaults.host is None and settings.default_host == "me"


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: cannot read the config file: No such file or directory"
    ]


# -- secrets from files, and the permission warning ------------------------------------------


def test_secret_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET + "\n", encoding="utf-8")
    settings = load_settings(
        write(tmp_path, MINIMAL.replace("secret_key: ${TEST_KEY}", "secret_key_file: key"))
    )
    secret = settings.hosts["me"].secret_key
    assert secret is not None and secret.get_secret_value() == SECRET


def test_secret_files_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("baidu-token\r\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(write(tmp_path, MINIMAL + "baidu: {app_id: '1', app_token_file: token}\n"))
    assert settings.baidu is not None and settings.baidu.app_token.get_secret_value() == "baidu-token"


def test_secret_file_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    config = write(
        tmp_path,
        """
        hosts:
          me: {type: imageban, secret_key_file: missing}
          guest: {type: imageban, client_id_file: empty}
          both: {type: imageban, client_id: x, client_id_file: empty}
        defaults: {host: me}
        folders: [{path: a}]
        """,
    )
    assert problems_of(config) == [
        f"{config}:2: hosts.me.secret_key_file: cannot read {tmp_path / 'missing'}: "
        "No such file or directory (create it or fix the path)",
        f"{config}:3: hosts.guest.client_id_file: {tmp_path / 'empty'} is empty (put the secret in it)",
        f"{config}:4: hosts.both.client_id_file: set client_id or client_id_file, not both",
    ]


@pytest.mark.parametrize(("content", "at"), [("a\nb\n", 2), ("  key  \n", 1)])
def test_a_bad_secret_in_a_file_names_the_file_key_and_the_file(
    tmp_path: Path, content: str, at: int
) -> None:
    (tmp_path / "token").write_text(content, encoding="utf-8")
    config = write(tmp_path, MINIMAL + "baidu:\n  app_id: '1'\n  app_token_file: token\n")
    assert problems_of(config) == [
        f"{config}:9: baidu.app_token_file: the secret in {tmp_path / 'token'} holds a space or line break "
        f"at character {at}: copy the secret again, exactly"
    ]


def test_a_missing_variable_in_a_secret_file_path_is_reported_once(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL.replace("secret_key: ${TEST_KEY}", "secret_key_file: ${WATCHD_NOPE}"))
    assert problems_of(config) == [
        f"{config}:4: hosts.me.secret_key_file: environment variable WATCHD_NOPE is not set "
        "(set it, or use ${WATCHD_NOPE:-…})"
    ]


def test_inline_secret_in_a_readable_file_warns(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL.replace("${TEST_KEY}", SECRET))
    assert load_settings(config).warnings == ()
    config.chmod(0o644)
    (warning,) = load_settings(config).warnings
    assert "hosts.me.secret_key" in warning and "chmod 600" in warning and SECRET not in warning
    assert load_settings(write(tmp_path, MINIMAL)).warnings == ()  # ${VAR}: not inline
    os.chmod(tmp_path / "config.yaml", 0o644)
    assert load_settings(tmp_path / "config.yaml").warnings == ()


def test_numbers_are_accepted_where_text_is_expected(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            MINIMAL + "baidu: {app_id: 123456, app_token: t}\ndefaults: {album: 42, tags: [2024, x]}\n",
        )
    )
    assert settings.baidu is not None and settings.baidu.app_id.get_secret_value() == "123456"
    assert settings.defaults.album == "42" and settings.defaults.tags == ["2024", "x"]


@pytest.mark.parametrize(
    "line",
    [
        f'secret_key: "{SECRET}\\q"',
        f"secret_key: {SECRET}: x",
        f"secret_key: '{SECRET}",
        f"secret_key: *{SECRET}",
    ],
)
def test_secrets_never_appear_in_yaml_syntax_problems(tmp_path: Path, line: str) -> None:
    (problem,) = problems_of(write(tmp_path, f"hosts:\n  me:\n    type: imageban\n    {line}\n"))
    assert "bad YAML" in problem and SECRET not in problem


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (SECRET + "\u00a0", "space or line break at character 17"),  # a non-breaking space
        ("TOP SECRET", "space or line break at character 4"),
        (SECRET + "\u200b", "non-ASCII or control character at character 17"),
    ],
)
def test_a_secret_with_a_pasted_stray_character_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, what: str
) -> None:
    monkeypatch.setenv("TEST_KEY", value)
    (problem,) = problems_of(write(tmp_path, MINIMAL))
    assert "hosts.me.secret_key" in problem and what in problem and "copy the secret again" in problem
    assert "TOP" not in problem and "SECRET" not in problem


def test_ratios_and_leading_zeros_stay_the_text_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    config = write(tmp_path, MINIMAL + "defaults:\n  tags: [wallpaper, 16:9, 4:3]\n  album: 0755\n")
    defaults = load_settings(config).defaults
    assert defaults.tags == ["wallpaper", "16:9", "4:3"]  # YAML 1.1 reads 16:9 as 969 (base 60)
    assert defaults.album == "0755"  # and 0755 as 493 (octal)


def test_a_host_named_by_a_number_can_be_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", SECRET)
    text = MINIMAL.replace("  me:\n", "  2024:\n") + "defaults:\n  host: 2024\n"
    assert load_settings(write(tmp_path, text)).default_host == "2024"
