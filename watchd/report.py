"""`watchd status`: what the journal says, as a table for people or JSON for scripts."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from watchd import journal as j
from watchd.batcher import SERVICE as BAIDU
from watchd.config import Settings
from watchd.departures import FolderAvailability, watchd_command
from watchd.journal import Journal
from watchd.logs import one_line
from watchd.quota import day_key, next_reset

SCHEMA_VERSION = 1


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")


def build_status(settings: Settings, journal: Journal, now: float | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (the `--json` schema, version `SCHEMA_VERSION`)."""
    now = time.time() if now is None else now
    counts = journal.counts()
    by_root = journal.counts_by_root()
    baidu_by_root = journal.baidu_failures_by_root()
    availability = FolderAvailability(journal)  # an empty mount point is no folder's content
    baidu_failures = journal.outbox_failures()
    refreshes, failed_refreshes = journal.refreshes_waiting()
    failed_files = journal.get_by_ids(  # the outbox keeps its file
        {row.file_id for row in baidu_failures} | {row.file_id for row in failed_refreshes}
    )
    pauses = {p.name: {"kind": p.kind, "until": _iso(p.until), "reason": p.reason} for p in journal.pauses()}
    hosts = {}
    for name, host in settings.hosts.items():
        service = f"imageban:{name}"
        hosts[name] = {
            "auth": "account" if host.secret_key is not None else "guest",
            "used_today": journal.quota_used(service, day_key(host.quota_reset_tz, now)),
            "daily_quota": host.quota,
            "resets_at": _iso(next_reset(host.quota_reset_tz, now)),
            "paused": pauses.get(service),
        }
    baidu = None
    if settings.baidu is not None:
        tz = settings.baidu.quota_reset_tz
        baidu = {
            "submitted_today": journal.quota_used(BAIDU, day_key(tz, now)),
            "daily_quota": settings.baidu.daily_quota,
            "learned_quota": journal.learned_quota(BAIDU),  # from its "quota used up" answers
            "resets_at": _iso(next_reset(tz, now)),
            "queue_push": journal.outbox_depth("push"),
            "queue_delete": journal.outbox_depth("delete"),
            "sidecars_to_update": refreshes,  # submitted; the sidecar does not show it yet
            "paused": pauses.get(BAIDU),
        }
    return {
        "schema": SCHEMA_VERSION,
        "journal": str(journal.path),
        "files": counts,
        "queue": {
            "uploads": counts[j.PENDING] + counts[j.UPLOADING] + counts[j.UPLOADED],
            "baidu": journal.outbox_depth(),
            "held_deletes": journal.held_deletes(),
        },
        "folders": [
            {
                "path": str(folder.path),
                "available": availability.problem(str(folder.path)) is None,  # as the daemon judges it
                "files": by_root.get(str(folder.path), dict.fromkeys(j.STATES, 0)),
                # Apart from `files`: a file is done once uploaded with its sidecar, whatever Baidu said.
                "baidu_failed": baidu_by_root.get(str(folder.path), 0),
            }
            for folder in settings.folders
        ],
        # Folders taken out of the config keep their files in the journal: with these rows,
        # `folders` add up to `files` and `baidu_failures_total`.
        "unwatched": [
            {"path": root, "files": by_root[root], "baidu_failed": baidu_by_root.get(root, 0)}
            for root in sorted(by_root.keys() - {str(folder.path) for folder in settings.folders})
        ],
        "hosts": hosts,
        "baidu": baidu,
        "paused": pauses,
        "recent_failures": [
            {
                "path": row.path or row.last_path,
                "state": row.state,
                "kind": row.error_kind,
                "reason": row.reason,
                "at": _iso(row.updated_at),
                "next_attempt_at": _iso(row.next_attempt_at) if row.state != j.FAILED else None,
            }
            for row in journal.recent_failures()
        ],
        "baidu_failures": [
            {
                "path": failed_files[row.file_id].path or failed_files[row.file_id].last_path,
                "id": row.baidu_id,
                "action": row.action,
                "reason": row.reason,
            }
            for row in baidu_failures
        ],
        "baidu_failures_total": sum(baidu_by_root.values()),  # the list holds the latest 20
        "sidecar_failures": [
            {
                "path": failed_files[row.file_id].path or failed_files[row.file_id].last_path,
                "reason": row.reason,
                "next_attempt_at": _iso(row.next_attempt_at),
            }
            for row in failed_refreshes
        ],
    }


def _plain(text: str) -> Text:
    """A file name or reason as a cell: not markup, one line, no control characters."""
    return Text(one_line(text))


def render_status(status: dict[str, Any], console: Console, config: Path | None) -> None:
    """The same data as a few tables for people; `config` is named in the commands suggested."""
    folders = Table(title="Folders", title_justify="left")
    for column in ("folder", "available", *j.STATES, "baidu failed"):
        folders.add_column(column, justify="left" if column in ("folder", "available") else "right")
    for folder in status["folders"]:
        folders.add_row(
            _plain(folder["path"]),  # a path like "[final] shots" is not markup
            "yes" if folder["available"] else "[red]NO[/red]",
            *_counts(folder["files"], folder["baidu_failed"]),
        )
    for folder in status["unwatched"]:
        folders.add_row(
            _plain(folder["path"]),
            "not watched",
            *_counts(folder["files"], folder["baidu_failed"]),
            style="dim",
        )
    if folders.row_count > 1:  # the rows add up to the totals
        folders.add_section()
        folders.add_row("total", "", *_counts(status["files"], status["baidu_failures_total"]))
    console.print(folders)
    services = Table(title="Services", title_justify="left")
    for column in ("service", "auth", "used today", "daily quota", "resets at", "queue", "state"):
        services.add_column(column)
    uploads = str(status["queue"]["uploads"])
    if len(status["hosts"]) > 1:  # a queued file's host is known only once its rules are read
        uploads += " (all hosts)"
    for name, host in status["hosts"].items():
        services.add_row(
            f"imageban:{name}",
            host["auth"],
            str(host["used_today"]),
            str(host["daily_quota"]),
            host["resets_at"],
            uploads,
            _state(host["paused"]),
        )
        uploads = ""  # said once
    baidu = status["baidu"]
    if baidu is not None:
        services.add_row(
            "baidu",
            "app",
            str(baidu["submitted_today"]),
            _baidu_quota(baidu),
            baidu["resets_at"],
            f"{baidu['queue_push']} push / {baidu['queue_delete']} delete",
            _state(baidu["paused"]),
        )
    console.print(services)
    if status["queue"]["held_deletes"]:
        console.print(
            f"[red]{status['queue']['held_deletes']} deletions are held by the mass-delete guard[/red]: "
            f"run `{watchd_command('confirm-deletes', config)}` if they are intended, or restore the files."
        )
    if status["recent_failures"] or status["baidu_failures"] or status["sidecar_failures"]:
        failures = Table(title="Recent problems", title_justify="left")
        failures.add_column("file")
        failures.add_column("state")
        failures.add_column("reason")
        for row in status["recent_failures"]:
            failures.add_row(_plain(row["path"]), row["state"], _plain(row["reason"] or ""))
        for row in status["baidu_failures"]:
            failures.add_row(
                _plain(row["path"]), f"baidu {row['action']} failed", _plain(row["reason"] or "")
            )
        for row in status["sidecar_failures"]:
            reason = f"submitted to Baidu; its sidecar could not show it: {row['reason']}"
            failures.add_row(
                _plain(row["path"]),
                "sidecar update waits",
                _plain(f"{reason} (next try {row['next_attempt_at']})"),
            )
        console.print(failures)
        if more := status["baidu_failures_total"] - len(status["baidu_failures"]):
            console.print(
                f"… and {more} more Baidu failures ({status['baidu_failures_total']} in all): "
                f"`{watchd_command('retry --failed', config)}` sends them all again, "
                f"`{watchd_command('retry PATH', config)}` one file's."
            )
    else:
        console.print("No problems recorded.")


def _counts(files: dict[str, int], baidu_failed: int) -> list[str]:
    """A row's cells after the folder's: files per state, and failed Baidu items in red."""
    return [*(str(files[state]) for state in j.STATES), f"[red]{baidu_failed}[/red]" if baidu_failed else "0"]


def _state(pause: dict[str, Any] | None) -> str:
    if pause is None:
        return "[green]active[/green]"
    until = f" until {pause['until']}" if pause["until"] else " until the config is fixed and reloaded"
    return f"[red]paused ({pause['kind']}){until}[/red]: {pause['reason']}"


def _baidu_quota(baidu: dict[str, Any]) -> str:
    """The configured daily quota, else the one learned from Baidu's answers."""
    if baidu["daily_quota"]:
        return str(baidu["daily_quota"])
    return f"{baidu['learned_quota']} (learned)" if baidu["learned_quota"] else "unknown"
