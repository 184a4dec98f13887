"""The configuration: typed, validated `Settings`, their defaults, and the loaders.

`load_settings` runs three passes over a config file, and every problem of every pass is
collected into one `ConfigError`, one line each: ``file:line: dotted.key: what is wrong
(what to do)``.
1. YAML is composed into a node tree, so the line of every key and list item is known.
2. ``${VAR}`` / ``${VAR:-default}`` in string values come from the environment (``$${`` is
   a literal ``${``); ``client_id_file`` and the other ``*_file`` secret keys are replaced
   by the content of the file they name.
3. pydantic validates shapes and values (unknown keys are errors), then the cross-checks run.
Rule files (``.watchd.yaml``) share passes 1 and 3 through `parse_rules` but get no
interpolation (a ``${VAR}`` in them is a problem): whoever can write into a watched folder
could otherwise copy a secret from the daemon's environment into a public title. This
module is the schema; the file mechanics of the passes and the wording of problems live in
`watchd.configfile`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from watchd import templates
from watchd.configfile import UNREAD_SECRET, Document, External, Loc, Located, references, validate
from watchd.errors import ConfigError
from watchd.imagefile import IMAGE_SUFFIXES, UNSUPPORTED_SUFFIXES

M = TypeVar("M", bound=BaseModel)

DEFAULT_IMAGEBAN_URL = "https://api.imageban.ru/v1"
DEFAULT_BAIDU_BASE = "https://baijiahao.baidu.com/builderinner/open/resource/image"
GUEST_QUOTA, ACCOUNT_QUOTA = 1000, 1500
NO_BAIDU_SECTION = (
    "is true, but {config} has no baidu: section, so nothing is ever submitted to Baidu: add one "
    "with app_id and app_token (or app_id_file / app_token_file; api_base, daily_quota, "
    "quota_reset_tz, linger and timeout are optional, see config.example.yaml), or remove this key"
)


# -- field types ---------------------------------------------------------------------------


def _template(value: str) -> str:
    templates.validate(value)
    return value


def _sidecar_name(value: str) -> str:
    used = templates.validate(value)
    if "/" in value:
        raise ValueError("must be a plain file name (the sidecar sits next to its original): remove the '/'")
    with_slashes = sorted(set(used) & {"relpath", "link", "short_link"})
    if with_slashes:
        raise ValueError(
            f"cannot use {{{with_slashes[0]}}}: it holds '/', and a sidecar name must be a plain file name"
        )
    # As rendered for cat.png: "{name}" and "{stem}.{ext}" end in the image's own suffix.
    example = templates.render(value, {**templates.file_context(Path("cat.png"), Path()), "id": "Ab12"})
    if os.path.splitext(example)[1].lower() in IMAGE_SUFFIXES | UNSUPPORTED_SUFFIXES:
        raise ValueError(
            f"must not end in an image suffix (cat.png's sidecar would be {example}): "
            "a sidecar must never replace an image; add one, e.g. {name}.link.json"
        )
    if not set(used) & {"name", "stem", "id"}:
        raise ValueError("must contain {name} or {stem} so that every image gets its own sidecar")
    return value


def _tag(value: str) -> str:
    if "#" in value:
        raise ValueError("a tag cannot contain '#' (Baidu joins tags with '#'): split it into separate tags")
    if not value.strip():
        raise ValueError("a tag cannot be empty: remove it")
    return value


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown time zone: use an IANA name such as Asia/Shanghai") from None
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def _secret(value: SecretStr) -> SecretStr:
    """Keys and tokens are printable ASCII: anything else is a copy-paste accident (a
    non-breaking space, a line break) that would fail every request. The message says
    where, never what."""
    text = value.get_secret_value()
    if not text:
        raise ValueError("is empty: set the secret, or remove the key")
    for position, char in enumerate(text, 1):
        if not (char.isascii() and char.isprintable()) or char.isspace():
            what = "a space or line break" if char.isspace() else "a non-ASCII or control character"
            raise ValueError(f"holds {what} at character {position}: copy the secret again, exactly")
    return value


def _none_as_empty(value: object) -> object:
    """`defaults:` with every line commented out is YAML null; treat it as no rules."""
    return {} if value is None else value


Template = Annotated[str, AfterValidator(_template)]
Tag = Annotated[str, AfterValidator(_tag)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Secret = Annotated[SecretStr, AfterValidator(_secret)]


def _absolute(path: Path, info: ValidationInfo) -> Path:
    """`path` with ~ expanded, made absolute against the config file's directory."""
    path = path.expanduser()
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return path if path.is_absolute() else base / path


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd; the first one if several), else $XDG_STATE_HOME/watchd."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "watchd"


def default_config_path() -> Path:
    """$WATCHD_CONFIG, else the user's config if it exists, else /etc/watchd/config.yaml if
    it exists, else the user's path (so that "no such file" names the likeliest place)."""
    if env := os.environ.get("WATCHD_CONFIG"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    user = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".config") / "watchd" / "config.yaml"
    system = Path("/etc/watchd/config.yaml")
    return system if not user.exists() and system.exists() else user


# -- models --------------------------------------------------------------------------------


def _is_number(annotation: Any) -> bool:
    """Whether a field annotated so holds an int or a float (optional or not)."""
    return bool({annotation, *get_args(annotation)} & {int, float})


class _Model(BaseModel):
    """Strict where YAML is loose: a number is accepted where text is expected (an album id
    `42`), but never a boolean where a number is (pydantic would read `true` as 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: object, info: ValidationInfo) -> object:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _is_number(field.annotation):
            raise ValueError(
                "must be a number, not true or false (which YAML also reads from yes, no, on, off): "
                "write a plain decimal"
            )
        return value


def _overlay(top: M, base: M) -> M:
    """`base` with every key that `top` sets replacing it; nested models merge by sub-key."""
    update: dict[str, Any] = {}
    for name in type(top).model_fields:
        value, below = getattr(top, name), getattr(base, name)
        if value is None:
            continue
        both_models = isinstance(value, BaseModel) and isinstance(below, BaseModel)
        update[name] = _overlay(value, below) if both_models else value
    return base.model_copy(update=update)


class SidecarRules(_Model):
    """Sidecar format and name template; None = inherit from the level above."""

    format: Literal["json", "txt", "md", "bbcode", "html"] | None = None
    name: Annotated[str, AfterValidator(_sidecar_name)] | None = None


class Rules(_Model):
    """One layer of rules (defaults, a folder's rules, or a rule file); None = not set here.

    With validation context ``{"hosts": names}``, `host` must be one of the names.
    """

    host: str | None = None
    album: str | None = None
    tags: list[Tag] | None = None
    copyright: bool | None = None
    title: Template | None = None
    fromurl: Template | None = None
    baidu: bool | None = None
    delete: bool | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    sidecar: SidecarRules | None = None

    @field_validator("host")
    @classmethod
    def _known_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        hosts = (info.context or {}).get("hosts")
        if value is not None and hosts is not None and value not in hosts:
            names = ", ".join(map(str, hosts)) or "none"
            raise ValueError(f"unknown host {value!r}: use one of the configured hosts ({names})")
        return value

    def over(self, base: Rules) -> Rules:
        """These rules on top of `base`: every key set here wins, `sidecar` merges by sub-key."""
        return _overlay(self, base)


RulesLayer = Annotated[Rules, BeforeValidator(_none_as_empty)]


class HostSettings(_Model):
    """An ImageBan upload target: guest (`client_id`) or account (`secret_key`), exactly one."""

    type: Literal["imageban"]
    client_id: Secret | None = None
    secret_key: Secret | None = None
    api_url: HttpUrl = DEFAULT_IMAGEBAN_URL
    daily_quota: int | None = Field(default=None, ge=1)
    quota_reset_tz: TimeZone = "Europe/Moscow"
    timeout: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_credential(self) -> HostSettings:
        if (self.client_id is None) == (self.secret_key is None):
            raise ValueError(
                "set exactly one of client_id (guest upload) or secret_key (account upload), "
                "or their *_file variants"
            )
        return self

    @property
    def auth(self) -> Literal["account", "guest"]:
        return "account" if self.secret_key is not None else "guest"

    @property
    def quota(self) -> int:
        """Uploads allowed per day: `daily_quota`, else ImageBan's published limit for the auth."""
        if self.daily_quota is not None:
            return self.daily_quota
        return ACCOUNT_QUOTA if self.auth == "account" else GUEST_QUOTA


class MetricsSettings(_Model):
    """The optional Prometheus endpoint: `listen` is host:port, loopback unless you mean otherwise."""

    listen: str = "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class BaiduSettings(_Model):
    """Baidu image-search submission (pushPic / delPic)."""

    app_id: Secret
    app_token: Secret
    api_base: HttpUrl = DEFAULT_BAIDU_BASE
    daily_quota: int | None = Field(default=None, ge=1)
    quota_reset_tz: TimeZone = "Asia/Shanghai"
    linger: float = Field(default=0.5, ge=0, le=1)
    timeout: float = Field(default=30.0, gt=0)


class RetrySettings(_Model):
    """Retries of transient failures: a few quick ones inside a call, then the item waits in
    the journal with a growing, jittered delay (so a restart never causes a retry storm)."""

    attempts: int = Field(default=3, ge=1, le=10)
    initial: float = Field(default=0.5, gt=0)
    maximum: float = Field(default=30.0, gt=0)
    requeue_initial: float = Field(default=30.0, gt=0)
    requeue_maximum: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _initial_within_maximum(self) -> RetrySettings:
        problems: list[tuple[Loc, str]] = []
        for initial, maximum in (("initial", "maximum"), ("requeue_initial", "requeue_maximum")):
            if getattr(self, initial) > getattr(self, maximum):
                problems.append(((initial,), f"is above retry.{maximum}: lower {initial} or raise {maximum}"))
        if problems:
            raise Located(problems)
        return self


class DeleteGuardSettings(_Model):
    """The mass-delete guard: deletions in one folder within `window` seconds are held when
    they exceed BOTH `max_files` and `max_percent` of the folder."""

    max_files: int = Field(default=50, ge=0)
    max_percent: float = Field(default=20.0, ge=0, le=100)
    window: float = Field(default=600.0, gt=0)


class FolderSettings(_Model):
    """A watched folder; `path` is absolute and resolved (relative: to the config's directory).

    `poll` None means: the watcher decides (inotify where it works, polling otherwise).
    """

    path: Path
    recursive: bool = True
    rules: RulesLayer = Rules()
    poll: bool | None = None
    poll_interval: float | None = Field(default=None, gt=0)

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: Path, info: ValidationInfo) -> Path:
        """A folder that does not exist yet is watched once it appears; a file never will be."""
        path = _absolute(value, info).resolve()
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError("exists and is not a directory: name the folder that holds the images")
        return path


class Settings(_Model):
    """The whole validated configuration. `config_path` and `warnings` come from the loader."""

    state_dir: Path = Field(default_factory=default_state_dir)
    concurrency: int = Field(default=4, ge=1, le=64)
    hosts: dict[str, HostSettings] = Field(min_length=1)
    baidu: BaiduSettings | None = None
    defaults: RulesLayer = Rules()
    folders: list[FolderSettings] = Field(min_length=1)
    settle: float = Field(default=1.0, gt=0, le=60)
    rescan_interval: float = Field(default=3600.0, ge=0)
    retry: RetrySettings = RetrySettings()
    delete_guard: DeleteGuardSettings = DeleteGuardSettings()
    metrics: MetricsSettings | None = None
    _config_path: Path | None = PrivateAttr(default=None)
    _warnings: tuple[str, ...] = PrivateAttr(default=())
    _baidu_on: tuple[str, ...] = PrivateAttr(default=())  # see `baidu_without_section`

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _absolute(value, info)

    @model_validator(mode="after")
    def _cross_check(self) -> Settings:
        problems: list[tuple[Loc, str]] = []
        if self.defaults.host is None and len(self.hosts) > 1:
            problems.append((("defaults", "host"), f"missing: choose one of {', '.join(self.hosts)}"))
        for i, folder in enumerate(self.folders):
            for j, other in enumerate(self.folders[:i]):
                if folder.path == other.path:
                    problems.append((("folders", i, "path"), f"the same folder as folders[{j}]: remove one"))
                elif other.path in folder.path.parents or folder.path in other.path.parents:
                    problems.append((("folders", i, "path"), f"nests with folders[{j}]: keep the outer one"))
            rules = folder.rules.over(self.defaults)
            host = rules.host or (next(iter(self.hosts)) if len(self.hosts) == 1 else None)
            if rules.album is not None and host is not None and self.hosts[host].auth == "guest":
                problems.append((("folders", i), f"album needs an account host; {host!r} is a guest host"))
        if problems:
            raise Located(problems)
        return self

    @property
    def config_path(self) -> Path | None:
        return self._config_path

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._warnings

    @property
    def default_host(self) -> str:
        """`defaults.host`, or the only configured host."""
        return self.defaults.host or next(iter(self.hosts))

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for the log redaction filter."""
        values = [secret for h in self.hosts.values() for secret in (h.client_id, h.secret_key)]
        urls = [h.api_url for h in self.hosts.values()]
        if self.baidu is not None:
            values += [self.baidu.app_id, self.baidu.app_token]
            urls.append(self.baidu.api_base)
        passwords = [password for url in urls if (password := urlsplit(url).password)]
        known = [s.get_secret_value() for s in values if s is not None]
        return [s for s in known if s != UNREAD_SECRET] + passwords


def load_settings(path: Path, *, read_secrets: bool = True) -> Settings:
    """Given a config file, return its validated settings.

    Raise ConfigError listing every problem found (unreadable file, bad YAML, unknown keys,
    bad values, missing environment variables, unreadable secret files, cross-check
    failures). A file that holds a secret inline and is readable by group or others gives
    a warning in `Settings.warnings` instead. Folders are not required to exist. Without
    `read_secrets` (commands that only read the journal) secrets are neither read nor needed.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{source}: cannot read the config file: {reason}"]) from exc
    document = Document(text, source)
    raw = document.require_mapping("state_dir:, hosts:, baidu:, defaults:, folders:")
    base_dir = path.absolute().parent
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    external = External(document, Path(credentials) if credentials else base_dir, read_secrets=read_secrets)
    data = external.resolve(raw, ())
    hosts = data.get("hosts")
    context = {"base_dir": base_dir, "hosts": tuple(map(str, hosts)) if isinstance(hosts, dict) else None}
    settings = validate(
        Settings, document, data, context, skip=external.failed, from_files=external.from_files
    )
    document.check()
    assert settings is not None  # validation failed only if it added problems
    settings._config_path = path.absolute()
    if settings.baidu is None:
        layers: list[tuple[Loc, Rules]] = [(("defaults",), settings.defaults)]
        layers += [(("folders", i, "rules"), folder.rules) for i, folder in enumerate(settings.folders)]
        settings._baidu_on = tuple(
            f"{document.locate((*loc, 'baidu'))}: {NO_BAIDU_SECTION.format(config='this file')}"
            for loc, rules in layers
            if rules.baidu
        )
    if external.inline and stat.S_IMODE(mode) & 0o077:
        settings._warnings = (
            f"{source}: holds secrets inline ({', '.join(external.inline)}) and is readable by group/others: "
            f"run chmod 600 {source}, or move them to ${{VAR}} or *_file",
        )
    return settings


def baidu_without_section(settings: Settings) -> list[str]:
    """Where the main config turns Baidu on (`defaults`, `folders[].rules`) though it has no
    `baidu:` section, so that nothing is ever submitted: not an error, as uploads go on
    regardless, but `watchd check` fails on it and the daemon warns at start and reload.
    Rule files are checked as they are read (`baidu_in_vain`)."""
    return list(settings._baidu_on)


def baidu_in_vain(rule_file: Path, text: str, rules: Rules, settings: Settings) -> str | None:
    """The problem of a rule file (`text`, parsed as `rules`) that turns Baidu on while the
    config has no `baidu:` section; None if it does not."""
    if not rules.baidu or settings.baidu is not None:
        return None
    where = Document(text, str(rule_file)).locate(("baidu",))
    return f"{where}: {NO_BAIDU_SECTION.format(config=settings.config_path or 'the config')}"


def parse_rules(text: str, source: str, hosts: Collection[str]) -> Rules:
    """Given the text of a rule file, return its rules (no environment interpolation).

    Raise ConfigError listing every problem, each with `source` and line; a ``${VAR}`` is
    one, rather than text that silently stays as written.
    """
    document = Document(text, source)
    data = document.require_mapping("rule keys such as host:, tags:, title:")
    environment: dict[Loc, str] = {}
    for loc, name in references(data):  # `${stem}` stays what it always was here: "$" and {stem}
        if name not in templates.KNOWN_PLACEHOLDERS:
            environment.setdefault(loc, name)
    for loc, name in environment.items():
        document.add(
            loc,
            f"${{{name}}}: environment variables are replaced only in the main config, not in rule "
            "files: write the value itself here (or set the key in the main config)",
        )
    rules = validate(Rules, document, data, {"hosts": hosts}, skip=environment)
    document.check()
    assert rules is not None  # validation failed only if it added problems
    return rules
