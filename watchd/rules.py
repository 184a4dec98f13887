"""The effective rules for a path: defaults < folders[].rules < rule files, top down.

A rule file (`.watchd.yaml`) holds rules for its directory and everything below it; the
nearest one wins key by key, and `sidecar` merges by sub-key. Rule files are cached by
(mtime_ns, size) and re-read when either changes, so an edit takes effect without a
restart even when no event arrives; `invalidate` covers filesystems whose mtime is too
coarse to notice a quick same-size edit. A directory's merged rules are kept too, with the
keys of the rule files they came from: an image's rules are asked for four times on its
way through, and while no rule file changed, that costs one `stat` a level.

Include/exclude globs are matched case-insensitively (cameras write `IMG_0001.JPG`)
against both the bare file name and the path relative to where the globs were set: the
directory of the rule file that set them (a rule file speaks for its own directory, so
`raw/` in `album/.watchd.yaml` means `album/raw/`), or the folder root for `defaults` and
`folders[].rules`. `fnmatch` semantics: `*` also crosses "/", so `raw/*` and `raw/**` both
mean everything below `raw/`, and a pattern ending in "/" means everything below that
directory.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TypeVar

from watchd.config import (
    FolderSettings,
    Rules,
    Settings,
    SidecarRules,
    baidu_in_vain,
    baidu_without_section,
    parse_rules,
)
from watchd.errors import ConfigError, display_url
from watchd.intree import read_regular

log = logging.getLogger(__name__)

RULE_FILE_NAME = ".watchd.yaml"
RULE_FILE_MAX = 64 * 1024  # bytes; a few hundred make a rich rule file
MAX_RESOLVED_DIRECTORIES = 4096  # directories whose merged rules are kept; memory stays small
_T = TypeVar("_T")


class RuleFileError(ConfigError):
    """A rule file cannot be used (unreadable, bad YAML, unknown key, bad value, unknown host).

    Raised for every path under it until it is fixed; `rule_file` is its path and each
    problem names it with the line.
    """

    def __init__(self, rule_file: Path, problems: list[str]) -> None:
        super().__init__(problems)
        self.rule_file = rule_file


@dataclass(frozen=True)
class EffectiveRules:
    """Every rule resolved for one file; templates are not rendered yet.

    `include_base`/`exclude_base`: the directory, relative to the folder root ("" for the
    root itself, `defaults` and `folders[].rules`), of the rule file that set `include`/
    `exclude`; their paths are relative to it.
    """

    host: str
    album: str | None = None
    tags: tuple[str, ...] = ()
    copyright: bool = False
    title: str = "{stem}"
    fromurl: str = "{short_link}"
    baidu: bool = False
    delete: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    sidecar_format: str = "json"
    sidecar_name: str = "{name}.link.json"
    include_base: str = ""
    exclude_base: str = ""


_DEFAULT = EffectiveRules(host="")


def _effective(
    rules: Rules, settings: Settings, include_base: str = "", exclude_base: str = ""
) -> EffectiveRules:
    """Fill what no layer set with the built-in defaults; `baidu` is on when Baidu is configured."""
    sidecar = rules.sidecar or SidecarRules()
    return EffectiveRules(
        host=rules.host or settings.default_host,
        album=rules.album,
        tags=tuple(_pick(rules.tags, [])),
        copyright=_pick(rules.copyright, _DEFAULT.copyright),
        title=_pick(rules.title, _DEFAULT.title),
        fromurl=_pick(rules.fromurl, _DEFAULT.fromurl),
        baidu=settings.baidu is not None and _pick(rules.baidu, True),
        delete=_pick(rules.delete, _DEFAULT.delete),
        include=tuple(_pick(rules.include, list(_DEFAULT.include))),
        exclude=tuple(_pick(rules.exclude, list(_DEFAULT.exclude))),
        sidecar_format=_pick(sidecar.format, _DEFAULT.sidecar_format),
        sidecar_name=_pick(sidecar.name, _DEFAULT.sidecar_name),
        include_base=include_base,
        exclude_base=exclude_base,
    )


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _matches(patterns: tuple[str, ...], relpath: str, name: str) -> bool:
    for pattern in patterns:
        pattern = pattern.lower().lstrip("/")
        pattern = pattern + "*" if pattern.endswith("/") else pattern
        if fnmatchcase(relpath.lower(), pattern) or fnmatchcase(name.lower(), pattern):
            return True
    return False


_Key = tuple[int, int]  # a rule file's (mtime_ns, size)


@dataclass(frozen=True)
class _Cached:
    key: _Key
    rules: Rules | None
    problems: list[str]


@dataclass(frozen=True)
class _Resolved:
    """A directory's effective rules, the rule files that apply there (root first), and the
    key each had (None: absent) when the rules were made from them."""

    rule_files: list[Path]
    keys: tuple[_Key | None, ...]
    rules: EffectiveRules


class RuleResolver:
    """Answers "which folder, which rules, is it wanted" for paths. Safe to share between threads."""

    def __init__(self, settings: Settings, warn: Callable[[str], None] | None = None) -> None:
        """`warn` hears, once each time a rule file is read, what in it works but does nothing
        (`baidu_in_vain`); by default it is logged."""
        self.settings = settings
        self._warn = warn or log.warning
        self._cache: dict[Path, _Cached] = {}
        self._resolved: dict[tuple[Path, Path], _Resolved] = {}  # by (folder root, directory)
        self._lock = threading.Lock()

    def folder_for(self, path: Path) -> FolderSettings | None:
        """The watched folder holding `path` (directly, or below it when recursive), or None."""
        for folder in self.settings.folders:
            if path.parent == folder.path or (folder.recursive and folder.path in path.parents):
                return folder
        return None

    def rules_for(self, path: Path) -> EffectiveRules:
        """The effective rules for the file `path`; outside every folder, the defaults.

        Raise RuleFileError if a rule file on the way down to it is broken.
        """
        folder = self.folder_for(path)
        if folder is None:
            return _effective(self.settings.defaults, self.settings)
        return self._for_directory(folder, path.parent)

    def is_candidate(self, path: Path) -> bool:
        """Whether `path` is in a folder, matches `include` and no `exclude` glob (each glob
        taken relative to where it was set, see the module docs).

        Raise RuleFileError like `rules_for`.
        """
        folder = self.folder_for(path)
        if folder is None:
            return False
        rules = self.rules_for(path)
        included = path.relative_to(folder.path / rules.include_base).as_posix()
        excluded = path.relative_to(folder.path / rules.exclude_base).as_posix()
        wanted = _matches(rules.include, included, path.name)
        return wanted and not _matches(rules.exclude, excluded, path.name)

    def selects(self, path: Path) -> bool:
        """Whether the rules of `path`'s directory leave any file out (an exclude glob, or an
        include other than "*"); when not, every file there is a candidate. Raise like `rules_for`."""
        rules = self.rules_for(path)
        return bool(rules.exclude) or rules.include != _DEFAULT.include

    def invalidate(self, path: Path) -> None:
        """Forget every cached rule file at or below `path` (a rule file or a directory), and
        the rules of every directory it applies to."""
        with self._lock:
            for cached in [p for p in self._cache if p == path or path in p.parents]:
                del self._cache[cached]
            for place, resolved in list(self._resolved.items()):
                if place[1] == path or path in place[1].parents or path in resolved.rule_files:
                    del self._resolved[place]

    def _for_directory(self, folder: FolderSettings, directory: Path) -> EffectiveRules:
        place = (folder.path, directory)
        with self._lock:
            known = self._resolved.get(place)
        rule_files = known.rule_files if known is not None else _rule_files(folder, directory)
        keys = tuple(self._key(rule_file) for rule_file in rule_files)
        if known is not None and known.keys == keys:
            return known.rules
        rules = self._merge(folder, rule_files, keys)
        with self._lock:
            if len(self._resolved) >= MAX_RESOLVED_DIRECTORIES:  # a tree of many directories
                self._resolved.clear()
            self._resolved[place] = _Resolved(rule_files, keys, rules)
        return rules

    def _merge(
        self, folder: FolderSettings, rule_files: list[Path], keys: tuple[_Key | None, ...]
    ) -> EffectiveRules:
        merged = folder.rules.over(self.settings.defaults)
        nearest: Path | None = None
        include_base = exclude_base = ""  # where the include/exclude globs in `merged` were set
        for rule_file, key in zip(rule_files, keys, strict=True):
            rules = None if key is None else self._load(rule_file, key)
            if rules is not None:
                merged, nearest = rules.over(merged), rule_file
                base = "/".join(rule_file.parent.relative_to(folder.path).parts)
                include_base = base if rules.include is not None else include_base
                exclude_base = base if rules.exclude is not None else exclude_base
        effective = _effective(merged, self.settings, include_base, exclude_base)
        if nearest is not None and effective.album and self.settings.hosts[effective.host].auth == "guest":
            raise RuleFileError(
                nearest, [f"{nearest}: album needs an account host; {effective.host!r} is a guest host"]
            )
        return effective

    def _key(self, rule_file: Path) -> _Key | None:
        """What tells `rule_file` changed: its (mtime_ns, size); None if there is none."""
        try:
            info = os.lstat(rule_file)
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._cache.pop(rule_file, None)
            return None
        except OSError as exc:
            raise RuleFileError(rule_file, [f"{rule_file}: cannot read: {exc.strerror}"]) from exc
        if not stat.S_ISREG(info.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a plain file"
            raise RuleFileError(
                rule_file,
                [
                    f"{rule_file}: {what}; a rule file must be a plain file (a link could lead to any "
                    "file watchd can read): copy the rules into it"
                ],
            )
        return (info.st_mtime_ns, info.st_size)

    def _load(self, rule_file: Path, key: _Key) -> Rules | None:
        """The rules in `rule_file`, whose key is `key` now; read again when that changed."""
        with self._lock:
            cached = self._cache.get(rule_file)
        if cached is None or cached.key != key:
            cached = self._parse(rule_file, key)
            with self._lock:
                self._cache[rule_file] = cached
        if cached.problems:
            raise RuleFileError(rule_file, cached.problems)
        return cached.rules

    def _parse(self, rule_file: Path, key: _Key) -> _Cached:
        try:
            text = _read_rule_file(rule_file)
            rules = parse_rules(text, str(rule_file), self.settings.hosts)
        except ConfigError as exc:
            return _Cached(key, None, exc.problems)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return _Cached(key, None, [f"{rule_file}: cannot read: {reason} (fix it or remove it)"])
        if (notice := baidu_in_vain(rule_file, text, rules, self.settings)) is not None:
            self._warn(notice)
        return _Cached(key, rules, [])


def _read_rule_file(rule_file: Path) -> str:
    """The text of a rule file: a plain file in the folder (see `open_regular`) of at most
    `RULE_FILE_MAX` bytes, so a giant file cannot fill memory nor stall the loop reading it."""
    try:
        data = read_regular(rule_file, RULE_FILE_MAX)
    except FileNotFoundError as exc:
        raise OSError(
            errno.ENOENT, f"{exc.strerror}; a rule file must be a plain file in the folder"
        ) from exc
    return data.decode("utf-8")


def _rule_files(folder: FolderSettings, directory: Path) -> list[Path]:
    """The rule files that apply in `directory`, from the folder root down."""
    directories = [folder.path]
    if folder.recursive:
        for part in directory.relative_to(folder.path).parts:
            directories.append(directories[-1] / part)
    return [d / RULE_FILE_NAME for d in directories]


def describe(settings: Settings) -> tuple[str, list[str]]:
    """The hosts, Baidu, and the effective rules per folder and per rule file below it; and
    the problems of the broken rule files, each once (files below those are not uploaded),
    then what is set but does nothing (`baidu: true` with Baidu not configured).

    For `watchd check`: human-readable, never shows a secret.
    """
    lines = ["hosts:"]
    broken: list[str] = []
    for name, host in settings.hosts.items():
        default = "  (default)" if name == settings.default_host else ""
        credential = "secret key" if host.auth == "account" else "client id"
        lines.append(
            f"  {name}: {host.type}, {host.auth} auth ({credential}), {display_url(host.api_url)}, "
            f"{host.quota} uploads/day (day in {host.quota_reset_tz}){default}"
        )
    if settings.baidu is None:
        lines.append("baidu: not configured (nothing is submitted)")
    else:
        baidu = settings.baidu
        quota = baidu.daily_quota or "learned from the API"
        lines.append(f"baidu: {display_url(baidu.api_base)}, quota {quota} (day in {baidu.quota_reset_tz})")
    lines.append(f"state_dir: {settings.state_dir}; concurrency: {settings.concurrency}")
    problems = baidu_without_section(settings)  # and those of rule files, as they are read
    resolver = RuleResolver(settings, warn=problems.append)
    for folder in settings.folders:
        watch = {None: "auto", True: "polling", False: "inotify"}[folder.poll]
        recursive = "recursive" if folder.recursive else "this directory only"
        lines += ["", f"folder {folder.path} ({recursive}, watch: {watch})"]
        if not folder.path.is_dir():
            lines.append("  unavailable now (not a directory): watched once it appears")
        for directory in _directories_with_rules(folder):
            has_file = (directory / RULE_FILE_NAME).is_file()
            lines.append(f"  {directory}/" + (f" (with {RULE_FILE_NAME})" if has_file else ""))
            try:
                rules = resolver._for_directory(folder, directory)
            except RuleFileError as exc:
                lines += [f"    BROKEN, files below are not uploaded: {problem}" for problem in exc.problems]
                broken += [problem for problem in exc.problems if problem not in broken]
                continue
            lines += [f"    {line}" for line in _rule_lines(rules, settings)]
    return "\n".join(lines), broken + problems


def _directories_with_rules(folder: FolderSettings) -> list[Path]:
    """The folder root, then every directory below it that holds a rule file."""
    found = [folder.path]
    if folder.recursive and folder.path.is_dir():
        for top, dirs, files in os.walk(folder.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # nothing is published there
            if RULE_FILE_NAME in files and Path(top) != folder.path:
                found.append(Path(top))
    return found


def _rule_lines(rules: EffectiveRules, settings: Settings) -> list[str]:
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    baidu = yes(rules.baidu) + ("" if settings.baidu is not None else " (Baidu is not configured)")
    return [
        f"host: {rules.host} ({settings.hosts[rules.host].auth})",
        f"album: {rules.album or '-'}",
        f"tags: {', '.join(rules.tags) or '-'}",
        f"copyright: {yes(rules.copyright)}",
        f"title: {rules.title!r}",
        f"fromurl: {rules.fromurl!r}",
        f"baidu: {baidu}; delete: {yes(rules.delete)}",
        f"include: {' '.join(rules.include) or '-'}; exclude: {' '.join(rules.exclude) or '-'}",
        f"sidecar: {rules.sidecar_format}, named {rules.sidecar_name!r}",
    ]
