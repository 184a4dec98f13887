"""The `watchd` command line: run, sync, check, status, retry, forget, emulator, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from watchd import __version__
from watchd.config import Settings, default_config_path, load_settings
from watchd.errors import ConfigError, WatchdError
from watchd.journal import JOURNAL_NAME, Journal
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
    retry = command("retry", _retry, "queue failed files again")
    retry.add_argument("paths", nargs="*", type=Path, help="files to retry")
    retry.add_argument("--failed", action="store_true", help="retry every failed file and Baidu item")
    forget = command("forget", _forget, "drop a file from the journal (it is treated as new if seen again)")
    forget.add_argument("paths", nargs="+", type=Path)
    command("confirm-deletes", _confirm_deletes, "release deletions held by the mass-delete guard")
    emulator = command("emulator", _emulator, "run the local emulator of ImageBan and Baidu")
    emulator.add_argument("--port", type=int, default=8088)
    emulator.add_argument("--host", default="127.0.0.1")
    demo = command("demo", _demo, "try the whole pipeline against the built-in emulator, no account needed")
    demo.add_argument("--dir", type=Path, default=Path("watchd-demo"), help="the folder to watch")
    return parser


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


@contextlib.contextmanager
def _journal(settings: Settings, *, read_only: bool = False) -> Iterator[Journal]:
    """The journal for a one-shot command, with a message instead of a traceback when it
    cannot be opened or read (permissions, a corrupt file, a newer or older schema)."""
    state_dir = settings.state_dir
    try:
        journal = Journal.open_read_only(state_dir) if read_only else Journal.open(state_dir)
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
        return Engine(settings, progress=progress)
    except (OSError, sqlite3.Error) as exc:
        raise WatchdError(
            f"cannot open the journal in {settings.state_dir}: {exc}; "
            "check state_dir in the config and that this user may write there"
        ) from exc


def _run(args: argparse.Namespace) -> int:
    return _engine(_settings(args)).run()


def _sync(args: argparse.Namespace) -> int:
    from watchd.progress import SyncProgress

    settings = _settings(args)
    with SyncProgress(sys.stderr) as progress:
        engine = _engine(settings, progress)
        code = engine.sync()
    outcomes = engine.outcomes
    summary = (
        f"sync: {outcomes['done']} published, {outcomes['failed']} failed, "
        f"{engine.left_queued} still queued (retry later or paused service)"
    )
    if engine.batcher is not None:
        baidu = engine.batcher.outcomes
        summary += (
            f"; Baidu: {baidu['submitted']} submitted, {baidu['withdrawn']} withdrawn, "
            f"{baidu['failed']} failed"
        )
    print(summary, file=sys.stderr)
    if code:
        print("sync: see `watchd status` for the reasons", file=sys.stderr)
    return code


def _check(args: argparse.Namespace) -> int:
    from watchd.rules import describe

    settings = _settings(args)
    print(describe(settings))
    print(f"config OK: {settings.config_path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from watchd.report import build_status, render_status

    settings = _settings(args, read_secrets=False)
    try:
        exists = (settings.state_dir / JOURNAL_NAME).exists()
    except OSError:  # not ours to look into: `_journal` says so
        exists = True
    if exists:
        with _journal(settings, read_only=True) as journal:
            status = build_status(settings, journal)
    else:
        print(f"no journal in {settings.state_dir} yet: watchd has not run with this config", file=sys.stderr)
        if not args.json:
            return 1
        status = _status_before_first_run(settings)  # a script still gets the schema, all zero
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # only here: ~30 ms that `run` and `sync` need not pay

        render_status(status, Console(width=None if sys.stdout.isatty() else 200))
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
    if not args.paths and not args.failed:
        print("watchd retry: name files to retry, or pass --failed for all of them", file=sys.stderr)
        return EXIT_CONFIG
    with _journal(_settings(args, read_secrets=False)) as journal:
        paths = None if args.failed else [str(p.resolve()) for p in args.paths]
        n = journal.retry_failed(paths)
    print(f"{n} queued again; a running daemon picks them up, or run `watchd sync`")
    return 0


def _forget(args: argparse.Namespace) -> int:
    missing = 0
    with _journal(_settings(args, read_secrets=False)) as journal:
        for path in args.paths:
            row = journal.get(str(path.resolve()))  # as the journal holds it: folders are resolved
            if row is None:
                print(f"{path}: not in the journal", file=sys.stderr)
                missing += 1
                continue
            journal.forget(row.id)
            print(f"{path}: forgotten")
    return 1 if missing else 0


def _confirm_deletes(args: argparse.Namespace) -> int:
    with _journal(_settings(args, read_secrets=False)) as journal:
        n = journal.confirm_deletes()
    print(f"{n} held deletions released; a running daemon withdraws them within seconds")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from watchd.emulator import serve_forever

    serve_forever(args.port, args.host)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from watchd.demo import run_demo

    return run_demo(args.dir.absolute())
