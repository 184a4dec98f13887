"""The `watchd` command line: run, sync, check, status, retry, forget, emulator, demo."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from watchd import __version__
from watchd.config import Settings, default_config_path, load_settings
from watchd.departures import watchd_command
from watchd.errors import ConfigError, WatchdError
from watchd.journal import DONE, FileRow, Journal
from watchd.logs import setup_logging

if TYPE_CHECKING:
    from watchd.engine import Engine, Progress

log = logging.getLogger("watchd")

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_CONFIG
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print("watchd: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except WatchdError as exc:  # already running, state directory unusable
        print(f"watchd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchd",
        description="Watch folders, upload new images to ImageBan, keep their links in sidecars, "
        "and submit them to Baidu image search.",
    )
    parser.add_argument("--version", action="version", version=f"watchd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        help="config file (default: $WATCHD_CONFIG, ~/.config/watchd/config.yaml, /etc/watchd/config.yaml)",
    )
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", default="auto", choices=["auto", "text", "json"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("run", _run, "run the daemon in the foreground (SIGTERM stops, SIGHUP reloads)")
    command(
        "sync", _sync, "one pass: reconcile every folder, do all queued work, exit (1 if anything failed)"
    )
    command("check", _check, "validate the config and print the effective rules per folder")
    status = command("status", _status, "counts per state, queues, quotas and recent failures")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    retry = command("retry", _retry, "queue failed files (and their failed Baidu items) again")
    retry.add_argument("paths", nargs="*", type=Path, help="files to retry")
    retry.add_argument("--failed", action="store_true", help="retry every failed file and Baidu item")
    forget = command(
        "forget",
        _forget,
        "drop a file from the journal (it is treated as new if seen again); its Baidu entry is withdrawn",
    )
    forget.add_argument("paths", nargs="+", type=Path, help="files to drop, as they are or were on disk")
    forget.add_argument(
        "--force",
        action="store_true",
        help="forget even a file whose Baidu entry would not be withdrawn (delete: false), leaving it",
    )
    command("confirm-deletes", _confirm_deletes, "release deletions held by the mass-delete guard")
    emulator = command("emulator", _emulator, "run the local emulator of ImageBan and Baidu")
    emulator.add_argument("--port", type=_port, default=8088, help="TCP port, 0 for any (default 8088)")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo = command("demo", _demo, "try the whole pipeline against the built-in emulator, no account needed")
    demo.add_argument("--dir", type=Path, default=Path("watchd-demo"), help="the folder to watch")
    return parser


def _port(text: str) -> int:
    """A TCP port for argparse, which turns the error into a usage message (exit 2)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use a number from 0 to 65535")
    return int(text)


def _settings(args: argparse.Namespace, *, read_secrets: bool = True) -> Settings:
    """The config for a command; one that only reads the journal (status, retry, forget,
    confirm-deletes) does not read the secrets, which may be the service's alone."""
    path = args.config or default_config_path()
    if not path.exists():
        raise ConfigError(
            [
                f"{path}: no such config file; copy config.example.yaml there, or pass -c FILE "
                "(or try `watchd demo` first)"
            ]
        )
    settings = load_settings(path, read_secrets=read_secrets)
    for warning in settings.warnings:
        log.warning("%s", warning)
    setup_logging(args.log_level, args.log_format, settings.secrets())
    return settings


class _NoJournal(WatchdError):
    """There is no journal in the state directory: watchd never ran with this config (here)."""


def _no_journal(settings: Settings) -> str:
    """Where a command looked for the journal, and how to point it at the daemon's."""
    if "state_dir" in settings.model_fields_set:
        where = f"state_dir in {settings.config_path}"
        fix = "pass -c the config the daemon runs with"
    else:
        where = "the default: $STATE_DIRECTORY, else ~/.local/state/watchd"
        fix = (
            "pass -c the config the daemon runs with and, for a system service, run this as its "
            "user with its state directory as STATE_DIRECTORY (see Status in docs/deploy.md)"
        )
    return (
        f"no journal in {settings.state_dir} ({where}): watchd has not run with this config there "
        f"yet; to reach a daemon's journal, {fix}"
    )


@contextlib.contextmanager
def _journal(settings: Settings, *, read_only: bool = False) -> Iterator[Journal]:
    """The journal for a one-shot command, with a message instead of a traceback when it
    cannot be opened or read (permissions, a corrupt file, a newer or older schema).

    Raise `_NoJournal` when there is none: only `run` and `sync` create it. A command that
    made one would report success on it (nothing to retry, no held deletions) while the
    daemon's journal, elsewhere, kept them, and `status` would no longer say "no journal".
    """
    state_dir = settings.state_dir
    try:
        journal = Journal.open_read_only(state_dir) if read_only else Journal.open(state_dir, create=False)
    except FileNotFoundError as exc:
        raise _NoJournal(_no_journal(settings)) from exc
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        raise WatchdError(
            f"cannot open the journal in {state_dir}: {exc}; run this as the user the service runs "
            "as (or with sudo), and check state_dir in the config"
        ) from exc
    try:
        yield journal
    except sqlite3.Error as exc:
        raise WatchdError(f"cannot read the journal in {state_dir}: {exc}") from exc
    finally:
        journal.close()


def _engine(settings: Settings, progress: Progress | None = None) -> Engine:
    """The engine for `run` and `sync`, with a clear message when its state cannot be opened."""
    from watchd.engine import Engine

    try:
        engine = Engine(settings, progress=progress)
    except (OSError, sqlite3.Error) as exc:
        raise WatchdError(
            f"cannot open the journal in {settings.state_dir}: {exc}; check state_dir in the config, "
            "that this user may write there and that its disk has free space"
        ) from exc
    # What is alive now (modules, the config, the engine) lives as long as the process: kept
    # out of the collector's full passes, which would walk it all again and again (3 % of the
    # CPU of a large sync, docs/benchmarks.md round 8). Garbage is collected first, not kept.
    gc.collect()
    gc.freeze()
    return engine


@contextlib.contextmanager
def _journal_writable(settings: Settings) -> Iterator[None]:
    """A message instead of a traceback when the journal stops taking writes before the engine
    can wait for it (while starting): SQLite rolled back, so nothing is half-recorded."""
    try:
        yield
    except sqlite3.Error as exc:
        raise WatchdError(
            f"cannot write the journal in {settings.state_dir}: {exc}; free space on its disk or make "
            "it writable, then run this again: nothing is lost"
        ) from exc


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    engine = _engine(settings)
    with _journal_writable(settings):
        return engine.run()


def _sync(args: argparse.Namespace) -> int:
    from watchd.progress import SyncProgress

    settings = _settings(args)
    with SyncProgress(sys.stderr) as progress:
        engine = _engine(settings, progress)
        with _journal_writable(settings):
            code = engine.sync()
    outcomes = engine.outcomes
    stopped = code > 128  # by SIGINT or SIGTERM: what is left was not tried, not refused
    why = "the next sync or run continues them" if stopped else "retry later or paused service"
    summary = (
        f"sync: {outcomes['done']} published, {outcomes['failed']} failed, "
        f"{engine.left_queued} still queued ({why})"
    )
    if engine.batcher is not None:
        baidu = engine.batcher.outcomes
        summary += (
            f"; Baidu: {baidu['submitted']} submitted, {baidu['withdrawn']} withdrawn, "
            f"{baidu['failed']} failed"
        )
    if engine.held_deletes:
        summary += f"; {engine.held_deletes} deletions held"
    if n := len(engine.unavailable):
        summary += f"; {n} watched folder{'' if n == 1 else 's'} unavailable"
    print(summary, file=sys.stderr)
    if engine.held_deletes:
        print(
            f"sync: {engine.held_deletes} deletions are held by the mass-delete guard: if they are "
            f"intended, run `{watchd_command('confirm-deletes', settings.config_path)}`; otherwise "
            "restore the files",
            file=sys.stderr,
        )
    for folder in engine.unavailable:
        print(
            f"sync: watched folder {folder} is unavailable (missing, unreadable or not mounted): "
            "nothing in it was done; mount or restore it, or fix its path in the config",
            file=sys.stderr,
        )
    if code and not stopped:
        status = watchd_command("status", settings.config_path)
        print(f"sync: see `{status}` for the reasons", file=sys.stderr)
    return code


def _check(args: argparse.Namespace) -> int:
    from watchd.rules import describe

    settings = _settings(args)
    text, broken = describe(settings)
    print(text, flush=True)
    if broken:  # the report above is still worth reading; the exit code says it is not OK
        raise ConfigError(broken)
    print(f"config OK: {settings.config_path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from watchd.report import build_status, render_status

    settings = _settings(args, read_secrets=False)
    exists = True
    try:
        with _journal(settings, read_only=True) as journal:
            status = build_status(settings, journal)
    except _NoJournal as exc:
        print(f"watchd: {exc}", file=sys.stderr)
        if not args.json:
            return 1
        exists = False
        status = _status_before_first_run(settings)  # a script still gets the schema, all zero
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # only here: ~30 ms that `run` and `sync` need not pay

        render_status(status, Console(width=None if sys.stdout.isatty() else 200), settings.config_path)
    return 0 if exists else 1


def _status_before_first_run(settings: Settings) -> dict[str, object]:
    """What `status --json` says before the first run: an empty journal's view, in memory
    (`status` creates no files), with `journal` null."""
    from watchd.report import build_status

    journal = Journal(Path(":memory:"))
    try:
        return {**build_status(settings, journal), "journal": None}
    finally:
        journal.close()


def _retry(args: argparse.Namespace) -> int:
    if args.failed == bool(args.paths):
        print(
            "watchd retry: name the files to retry, or pass --failed for all of them (not both)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    settings = _settings(args, read_secrets=False)
    with _journal(settings) as journal:
        if args.failed:
            n = journal.retry_failed()
        else:
            n = skipped = 0
            for path in args.paths:
                row = journal.get(str(path.resolve()))  # as the journal holds it: folders are resolved
                queued = journal.retry_file(row.id) if row is not None else 0
                if not queued and row is not None and _never_submitted(settings, journal, row):
                    journal.requeue_sidecar(row.id, row.size, row.mtime_ns)  # which builds its push
                    print(f"{path}: queued for its first Baidu submission")
                    queued = 1
                if not queued:
                    print(f"{path}: nothing queued: {_why_not_retried(row)}", file=sys.stderr)
                    skipped += 1
                n += queued
    print(f"{n} queued again; a running daemon picks them up, or run `watchd sync`")
    return 1 if not args.failed and skipped else 0


def _never_submitted(settings: Settings, journal: Journal, row: FileRow) -> bool:
    """A published file that Baidu never got, though its rules submit it now: published while
    the `baidu:` section was out of the config, or its folder said `baidu: false` then."""
    from watchd.rules import RuleFileError, RuleResolver

    if row.state != DONE or row.path is None or settings.baidu is None or row.baidu_may_hold:
        return False
    try:
        submits = RuleResolver(settings).rules_for(Path(row.path)).baidu
    except RuleFileError:
        return False
    return submits and not journal.push_queued(row.id)


def _why_not_retried(row: FileRow | None) -> str:
    if row is None:
        return "not in the journal (a path outside the watched folders, excluded, or not seen yet)"
    if row.state == DONE:
        return "not failed: it is done (uploaded, sidecar written) and no Baidu item of it failed"
    retried = f", retried on its own ({row.reason})" if row.reason else ""
    return f"not failed: it is {row.state}{retried}"


def _forget(args: argparse.Namespace) -> int:
    settings = _settings(args, read_secrets=False)
    problems = 0
    with _journal(settings) as journal:
        for path in args.paths:
            row = journal.get(str(path.resolve()))  # as the journal holds it: folders are resolved
            if row is None:
                print(f"{path}: not in the journal", file=sys.stderr)
                problems += 1
                continue
            kept = _kept_in_baidu(settings, row.path or row.last_path) if row.baidu_may_hold else None
            if kept and not args.force:
                print(
                    f"{path}: not forgotten: Baidu may hold it (id {row.baidu_id}) and {kept}, so that "
                    "entry would stay for good and a second one be pushed when the file is seen again; "
                    "pass --force to forget it anyway",
                    file=sys.stderr,
                )
                problems += 1
                continue
            withdraw = bool(row.baidu_may_hold) and kept is None
            journal.forget(row.id, withdraw=withdraw)
            if withdraw:
                print(
                    f"{path}: forgotten; its Baidu entry (id {row.baidu_id}) is withdrawn by a running "
                    "daemon within a minute, or by `watchd sync`"
                )
            else:
                print(f"{path}: forgotten")
    return 1 if problems else 0


def _kept_in_baidu(settings: Settings, path: str) -> str | None:
    """Why deleting the original at `path` would not withdraw it from Baidu (the rules
    `Pipeline.retire` applies), or None when it would."""
    from watchd.rules import RuleFileError, RuleResolver

    if settings.baidu is None:
        return "Baidu is not configured"
    try:
        rules = RuleResolver(settings).rules_for(Path(path))
    except RuleFileError:
        return None  # as for a deletion: withdrawn
    if not rules.baidu:
        return "its rules say baidu: false"
    return None if rules.delete else "its rules say delete: false"


def _confirm_deletes(args: argparse.Namespace) -> int:
    with _journal(_settings(args, read_secrets=False)) as journal:
        n = journal.confirm_deletes()
    print(f"{n} held deletions released; a running daemon withdraws them within seconds")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from watchd.emulator import serve_forever

    try:
        serve_forever(args.port, args.host)
    except OSError as exc:  # binding: the port is taken or privileged, or the host is not ours
        hint = {
            errno.EADDRINUSE: "pick another --port, or stop what listens there",
            errno.EACCES: "pick a --port above 1023",
        }.get(exc.errno or 0, "pass --host a name or address of this machine, such as 127.0.0.1")
        raise WatchdError(
            f"emulator: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; {hint}"
        ) from exc
    return 0


def _demo(args: argparse.Namespace) -> int:
    from watchd.demo import run_demo

    return run_demo(args.dir.absolute())
