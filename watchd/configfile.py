"""The mechanics of reading a config or rule file, apart from what its keys mean.

`watchd.config` declares the schema (pydantic models, defaults, cross-checks); this module
does the rest, so that the schema reads as a schema:
- `Document` composes YAML into a node tree to know the line of every key and list item,
  and collects problems as ``file:line: dotted.key: what is wrong (what to do)``;
- `External` replaces ``${VAR}`` / ``${VAR:-default}`` from the environment (``$${`` is a
  literal ``${``) and ``*_file`` secret keys by the content of the file they name;
- `validate` runs pydantic and turns its errors into such lines, with "did you mean" for
  unknown keys. Messages never contain values: pydantic's input echo is dropped, quotes
  from the YAML parser are blanked, and every message is built from the error type,
  location and our text, so a secret in the file cannot leak through an error.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from watchd.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

SECRET_KEYS = frozenset({"client_id", "secret_key", "app_id", "app_token"})
FILE_SUFFIX = "_file"


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- YAML with lines -----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML's safe loader reads it, except numbers: only plain decimals are numbers,
    so `16:9` stays the text 16:9 (YAML 1.1 reads 969, in base 60) and an album id `0755`
    stays 0755 (not 493, in octal), as YAML 1.2 has it."""


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_NUMBER_TAGS[0], re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _NUMBER_TAGS[1],
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


class Document:
    """A parsed YAML document: its data, the line of every key and item, and its problems."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {(): 1}
        self._problems: list[tuple[int, str]] = []
        try:
            loader = _Loader(text)  # its reader refuses control characters at once
        except yaml.YAMLError as exc:
            raise ConfigError([f"{source}: bad YAML: {_parser_text(str(exc))}"]) from exc
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
        """Record a problem at `loc` (where: see `locate`)."""
        self._problems.append((self._line(loc), f"{self.locate(loc)}: {text}"))

    def locate(self, loc: Loc) -> str:
        """``file:line: dotted.key`` for `loc`, on the line of its nearest enclosing key or item."""
        line = self._line(loc)
        return f"{self.source}:{line}: {_dotted(loc)}" if loc else f"{self.source}:{line}"

    def _line(self, loc: Loc) -> int:
        return next(self.lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in self.lines)

    def check(self) -> None:
        """Raise ConfigError with every problem recorded, in line order, if there is any."""
        if self._problems:
            raise ConfigError([text for _, text in sorted(self._problems, key=lambda p: p[0])])

    def require_mapping(self, what: str) -> dict[Any, Any]:
        """The data as a mapping ({} for an empty file); ConfigError naming `what` otherwise."""
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


# -- environment and secret files ----------------------------------------------------------

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_ENV_ONLY = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def references(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Every ``${NAME}`` / ``${NAME:-default}`` in the strings of `value`, as (location, NAME)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from references(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from references(item, (*loc, index))
    elif isinstance(value, str):
        for match in _REFERENCE.finditer(value):
            if match.group(1) is not None:
                yield loc, match.group(1)


def _secret_scope(loc: Loc) -> bool:
    """Whether the mapping at `loc` holds credentials: ``hosts.<name>`` or ``baidu``."""
    return loc == ("baidu",) or (len(loc) == 2 and loc[0] == "hosts")


UNREAD_SECRET = "not-read"


class External:
    """Replaces ``${VAR}`` and ``*_file`` secrets, recording problems and inline secrets.

    Relative secret file paths are taken from `secrets_dir`. Without `read_secrets`, every
    secret is left unread, as `UNREAD_SECRET` (its environment variable or file may be the
    service's alone). A value that could not be
    resolved becomes "" and its location goes into `failed`, so that validation does not
    report the same key a second time. `inline` lists the secret keys written in the file
    itself (not as a lone ``${VAR}``), as dotted keys. `from_files` maps the location of
    each secret read from a file to its ``*_file`` key and that file, so that a problem
    with its content is reported where the user can fix it (see `validate`).
    """

    def __init__(self, document: Document, secrets_dir: Path, *, read_secrets: bool = True) -> None:
        self.document = document
        self.secrets_dir = secrets_dir
        self.read_secrets = read_secrets
        self.failed: set[Loc] = set()
        self.inline: list[str] = []
        self.from_files: dict[Loc, tuple[Loc, Path]] = {}

    def resolve(self, value: Any, loc: Loc) -> Any:
        """`value` (found at `loc`) with every reference in it replaced, recursively."""
        if isinstance(value, dict):
            return self._mapping(value, loc)
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if isinstance(value, str):
            return self._interpolate(value, loc)
        return value

    def _mapping(self, value: dict[Any, Any], loc: Loc) -> dict[Any, Any]:
        secret_scope = _secret_scope(loc)
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            target = name.removesuffix(FILE_SUFFIX)
            if secret_scope and target in SECRET_KEYS and not self.read_secrets:
                out[target] = UNREAD_SECRET  # a command that only reads the journal needs none
                continue
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
        name = self._interpolate(raw, loc)
        if loc in self.failed:  # a variable in the path is missing: reported once, nothing to read
            self.failed.add(target)
            return ""
        path = Path(name).expanduser()
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
        self.from_files[target] = (loc, path)
        return secret

    def _fail(self, loc: Loc, text: str) -> None:
        self.failed.add(loc)
        self.document.add(loc, text)


# -- validation ----------------------------------------------------------------------------


class Located(ValueError):
    """Raised by cross-checks to report problems at locations below the validated model."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(text for _, text in problems))
        self.problems = problems


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


def validate(
    model: type[M],
    document: Document,
    data: Any,
    context: dict[str, Any],
    skip: Collection[Loc] = (),
    from_files: Mapping[Loc, tuple[Loc, Path]] | None = None,
) -> M | None:
    """`model` validated from `data`, or None with every problem added to `document`.

    Problems at a location in `skip` (already reported, see `External.failed`) are dropped;
    those at a secret read from a file (`External.from_files`) go to its ``*_file`` key,
    naming the file.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            located = (error.get("ctx") or {}).get("error")
            if isinstance(located, Located):
                pairs = [(error["loc"] + sub, text) for sub, text in located.problems]
            else:
                pairs = [(error["loc"], _error_text(error, model))]
            for loc, text in pairs:
                if loc in skip:
                    continue
                if from_files and loc in from_files:
                    loc, path = from_files[loc]
                    text = f"the secret in {path} {text}"
                document.add(loc, text)
        return None
