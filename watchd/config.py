"""The configuration file: YAML → environment and secret files → typed, validated `Settings`.

Three passes, and every problem of every pass is collected into one `ConfigError`, one
line each: ``file:line: dotted.key: what is wrong (what to do)``.
1. YAML is composed into a node tree, so the line of every key and list item is known.
2. ``${VAR}`` / ``${VAR:-default}`` in string values come from the environment (``$${`` is
   a literal ``${``); ``client_id_file`` and the other ``*_file`` secret keys are replaced
   by the content of the file they name.
3. pydantic validates shapes and values (unknown keys are errors), then the cross-checks run.
Rule files (``.watchd.yaml``) share passes 1 and 3 through `parse_rules` but get no
interpolation: whoever can write into a watched folder could otherwise copy a secret from
the daemon's environment into a public title. Messages never contain values: pydantic's
input echo is dropped and every message is built from the error type, location and our text.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from watchd import templates
from watchd.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

SECRET_KEYS = frozenset({"client_id", "secret_key", "app_id", "app_token"})
FILE_SUFFIX = "_file"
DEFAULT_IMAGEBAN_URL = "https://api.imageban.ru/v1"
DEFAULT_BAIDU_BASE = "https://baijiahao.baidu.com/builderinner/open/resource/image"
GUEST_QUOTA, ACCOUNT_QUOTA = 1000, 1500


class _Located(ValueError):
    """Raised by cross-checks to report problems at locations below the validated model."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(text for _, text in problems))
        self.problems = problems


# -- field types ---------------------------------------------------------------------------


def _template(value: str) -> str:
    templates.validate(value)
    return value


def _sidecar_name(value: str) -> str:
    used = templates.validate(value)
    if "/" in value:
        raise ValueError("must be a plain file name (the sidecar sits next to its original): remove the '/'")
    if not set(used) & {"name", "stem", "relpath", "id", "link", "short_link"}:
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
    if not value.get_secret_value():
        raise ValueError("is empty: set the secret, or remove the key")
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


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
        return _absolute(value, info).resolve()


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
    _config_path: Path | None = PrivateAttr(default=None)
    _warnings: tuple[str, ...] = PrivateAttr(default=())

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
            raise _Located(problems)
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
        if self.baidu is not None:
            values += [self.baidu.app_id, self.baidu.app_token]
        return [s.get_secret_value() for s in values if s is not None]


# -- pass 1: YAML with lines ---------------------------------------------------------------


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Document:
    """A parsed YAML document: its data, the line of every key and item, and its problems."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {(): 1}
        self._problems: list[tuple[int, str]] = []
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data: Any = loader.construct_document(node) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            raise ConfigError([self._yaml_problem(exc)]) from exc
        except yaml.YAMLError as exc:
            raise ConfigError([f"{source}: bad YAML: {_parser_text(str(exc))}"]) from exc
        finally:
            loader.dispose()
        if node is not None:
            self._record(node, (), set())

    def _yaml_problem(self, exc: yaml.MarkedYAMLError) -> str:
        mark = exc.problem_mark or exc.context_mark
        where = f"{self.source}:{mark.line + 1}:{mark.column + 1}" if mark else self.source
        what = exc.problem or exc.context or "invalid YAML"
        context = f", {exc.context}" if exc.problem and exc.context else ""
        return f"{where}: bad YAML: {_parser_text(what + context)} (fix the syntax there)"

    def _record(self, node: yaml.Node, loc: Loc, seen: set[int]) -> None:
        if id(node) in seen:  # an alias: its lines are those of the anchor
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in keys:
                    self.add((*loc, key), "duplicate key, YAML keeps only the last one (remove one)")
                keys.add(key)
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                self._record(value_node, (*loc, key), seen)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                self._record(item, (*loc, index), seen)

    def add(self, loc: Loc, text: str) -> None:
        """Record a problem at `loc`, on the line of its nearest enclosing key or item."""
        line = next(self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines)
        where = f"{self.source}:{line}: {_dotted(loc)}" if loc else f"{self.source}:{line}"
        self._problems.append((line, f"{where}: {text}"))

    def check(self) -> None:
        """Raise ConfigError with every problem recorded, in line order, if there is any."""
        if self._problems:
            raise ConfigError([text for _, text in sorted(self._problems, key=lambda p: p[0])])

    def require_mapping(self, what: str) -> dict[Any, Any]:
        if self.data is None:
            return {}
        if not isinstance(self.data, dict):
            raise ConfigError([f"{self.source}:1: the file must be a mapping of keys ({what})"])
        return self.data


_QUOTED = re.compile(r"'([^']*)'")
_HARMLESS_QUOTE = re.compile(r".{0,2}|<[a-z ]+>")  # a character, or a token name like <scalar>


def _parser_text(text: str) -> str:
    """A parser message on one line, without any text it quotes from the file (an undefined
    alias named like a secret, say)."""
    text = _QUOTED.sub(lambda m: m.group(0) if _HARMLESS_QUOTE.fullmatch(m.group(1)) else "'…'", text)
    return " ".join(text.split())


# -- pass 2: environment and secret files --------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


class _External:
    """Replaces ``${VAR}`` and ``*_file`` secrets, recording problems and inline secrets.

    A value that could not be resolved becomes "" and its location goes into `failed`, so
    that validation does not report the same key a second time.
    """

    def __init__(self, document: _Document, secrets_dir: Path) -> None:
        self.document = document
        self.secrets_dir = secrets_dir
        self.failed: set[Loc] = set()
        self.inline: list[str] = []

    def resolve(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, dict):
            return self._mapping(value, loc)
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if isinstance(value, str):
            return self._interpolate(value, loc)
        return value

    def _mapping(self, value: dict[Any, Any], loc: Loc) -> dict[Any, Any]:
        secret_scope = loc == ("baidu",) or (len(loc) == 2 and loc[0] == "hosts")
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            target = name.removesuffix(FILE_SUFFIX)
            if secret_scope and name.endswith(FILE_SUFFIX) and target in SECRET_KEYS:
                if target in value:
                    self._fail((*loc, name), f"set {target} or {name}, not both")
                else:
                    out[target] = self._read_secret(item, (*loc, name), (*loc, target))
                continue
            from_env = isinstance(item, str) and _ENV_ONLY.fullmatch(item)
            if secret_scope and name in SECRET_KEYS and not from_env:
                self.inline.append(_dotted((*loc, name)))
            out[key] = self.resolve(item, (*loc, key))
        return out

    def _interpolate(self, text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            whole, name, default = match.group(0), match.group(1), match.group(2)
            if whole == "$${":
                return "${"
            if name is None:
                self._fail(loc, "a '${' that is not ${NAME} or ${NAME:-default} (write $${ for a literal)")
                return ""
            value = os.environ.get(name)
            if default is not None and not value:
                return default
            if value is None:
                self._fail(loc, f"environment variable {name} is not set (set it, or use ${{{name}:-…}})")
                return ""
            return value

        return _REFERENCE.sub(replace, text)

    def _read_secret(self, raw: Any, loc: Loc, target: Loc) -> str:
        if not isinstance(raw, str):
            self._fail(loc, "expected the path of a file holding the secret")
            return ""
        path = Path(self._interpolate(raw, loc)).expanduser()
        path = path if path.is_absolute() else self.secrets_dir / path
        try:
            secret = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail(loc, f"cannot read {path}: {reason} (create it or fix the path)")
            secret = ""
        else:
            if not secret:
                self._fail(loc, f"{path} is empty (put the secret in it)")
        if not secret:
            self.failed.add(target)
        return secret

    def _fail(self, loc: Loc, text: str) -> None:
        self.failed.add(loc)
        self.document.add(loc, text)


# -- pass 3: validation --------------------------------------------------------------------


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys allowed at `loc` below `model` (for "did you mean"), or [] if unknown."""
    annotation: Any = model
    for part in loc:
        annotation = _strip_optional(annotation)
        if _is_model(annotation) and isinstance(part, str) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return []
    annotation = _strip_optional(annotation)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _error_text(error: Any, model: type[BaseModel]) -> str:
    kind, loc, msg = error["type"], error["loc"], error["msg"]
    if kind == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if close:
            return f"unknown key — did you mean {close[0]!r}? (remove or rename it)"
        return f"unknown key (remove it; known keys here: {', '.join(known)})"
    if kind == "missing":
        return "required key is missing (add it)"
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    hint = {"string_type": " (quote it)", "bool_type": " (write true or false)"}.get(kind, "")
    return f"{msg}{hint}"


def _validate(
    model: type[M], document: _Document, data: Any, context: dict[str, Any], skip: Collection[Loc] = ()
) -> M | None:
    """`model` validated from `data`, or None with every problem added to `document`."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            located = (error.get("ctx") or {}).get("error")
            if isinstance(located, _Located):
                pairs = [(error["loc"] + sub, text) for sub, text in located.problems]
            else:
                pairs = [(error["loc"], _error_text(error, model))]
            for loc, text in pairs:
                if loc not in skip:
                    document.add(loc, text)
        return None


def load_settings(path: Path) -> Settings:
    """Given a config file, return its validated settings.

    Raise ConfigError listing every problem found (unreadable file, bad YAML, unknown keys,
    bad values, missing environment variables, unreadable secret files, cross-check
    failures). A file that holds a secret inline and is readable by group or others gives
    a warning in `Settings.warnings` instead. Folders are not required to exist.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{source}: cannot read the config file: {reason}"]) from exc
    document = _Document(text, source)
    raw = document.require_mapping("state_dir:, hosts:, baidu:, defaults:, folders:")
    base_dir = path.absolute().parent
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    external = _External(document, Path(credentials) if credentials else base_dir)
    data = external.resolve(raw, ())
    hosts = data.get("hosts")
    context = {"base_dir": base_dir, "hosts": tuple(hosts) if isinstance(hosts, dict) else None}
    settings = _validate(Settings, document, data, context, skip=external.failed)
    document.check()
    assert settings is not None  # validation failed only if it added problems
    settings._config_path = path.absolute()
    if external.inline and stat.S_IMODE(mode) & 0o077:
        settings._warnings = (
            f"{source}: holds secrets inline ({', '.join(external.inline)}) and is readable by group/others: "
            f"run chmod 600 {source}, or move them to ${{VAR}} or *_file",
        )
    return settings


def parse_rules(text: str, source: str, hosts: Collection[str]) -> Rules:
    """Given the text of a rule file, return its rules (no environment interpolation).

    Raise ConfigError listing every problem, each with `source` and line.
    """
    document = _Document(text, source)
    data = document.require_mapping("rule keys such as host:, tags:, title:")
    rules = _validate(Rules, document, data, {"hosts": hosts})
    document.check()
    assert rules is not None  # validation failed only if it added problems
    return rules
