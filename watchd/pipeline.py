"""The steps one file goes through, each ending in a journal write.

`intake` decides (on the engine's loop thread) whether a path is new work; `process` does
the work (on an upload worker): inspect → claim in the journal → upload → sidecar → queue
for Baidu. Every step records its outcome before the next begins, so a crash anywhere is
resumed from the journal. Only this module and the batcher turn service errors into
journal states; the clients only classify.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from watchd import journal as j
from watchd.config import FolderSettings, Settings
from watchd.departures import watchd_command
from watchd.errors import (
    AFTER_THE_CONFIG_IS_FIXED,
    ConfigurationError,
    PermanentFileError,
    QuotaError,
    ServiceError,
)
from watchd.hosts.base import Host, UploadRequest
from watchd.imagefile import (
    IMAGE_SUFFIXES,
    UNSUPPORTED_SUFFIXES,
    LoadedImage,
    inspect_image,
    load_image,
    sha256_file,
)
from watchd.indexers.baidu import encode_url, make_title, validate_push_item
from watchd.indexers.base import PushItem
from watchd.intree import in_real_directory
from watchd.journal import FileRow, Journal, UploadResult
from watchd.quota import QuotaGate
from watchd.retry import RetryPolicy
from watchd.rules import RULE_FILE_NAME, EffectiveRules, RuleFileError, RuleResolver
from watchd.scan import is_regular_file
from watchd.schema import DAILY_QUOTA
from watchd.sidecar import (
    TEMP_MARKER,
    SidecarRecord,
    remove_sidecar,
    render_sidecar,
    sidecar_path,
    write_atomic,
    written_for,
)
from watchd.templates import file_context, render, render_url
from watchd.templates import validate as template_fields

log = logging.getLogger(__name__)

TEMP_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", "~", ".swp", ".!sync")
CONFIG_PAUSE_RECHECK = 3600.0


class Intake(enum.Enum):
    """What `intake` made of a path."""

    IGNORED = "ignored"  # not ours: not an image name, excluded, hidden, vanished
    UNCHANGED = "unchanged"  # the journal already has exactly this
    QUEUED = "queued"  # queued for upload
    WAIT = "wait"  # looks unfinished: check again once it stops changing
    FAILED = "failed"  # bad input, recorded with its reason
    MOVED = "moved"  # the same content vanished elsewhere: a move


def candidate_name(name: str) -> bool:
    """Could this file name be an image of ours? (Cheap: used on every event and scanned file.)"""
    if name.startswith(".") or TEMP_MARKER in name or name == RULE_FILE_NAME or name.endswith(TEMP_SUFFIXES):
        return False
    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_SUFFIXES or suffix in UNSUPPORTED_SUFFIXES


NAME_MAX = 255  # bytes in a file name on Linux's file systems
RERENDER_CHUNK = 500  # files read at once by `rerender_queued_pushes`, well below SQLite's 999 variables


def _publishable(path: str, root: Path) -> bool:
    """An image name with no hidden directory between `root` and it (`.Trash-1000/`, `.git/`,
    a sync tool's `.stfolder`), so that moving a file into one counts as moving it out."""
    if not candidate_name(os.path.basename(path)):
        return False
    below = os.path.relpath(os.path.dirname(path), root)
    return below == "." or not any(part.startswith(".") for part in below.split(os.sep))


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Pipeline:
    """Per-file work, shared by the daemon (`run`) and the one-pass `sync`."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        hosts: dict[str, Host],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.hosts = hosts
        self.clock = clock
        self.resolver = RuleResolver(settings)
        self.retry = RetryPolicy(settings.retry, clock, sleep)
        # `concurrency` is the number of uploads in flight, each slot held from the claim to
        # the answer (`_send`); the workers outnumber the slots so that reading a file,
        # recording its upload and writing its sidecar overlap other uploads.
        self.upload_slots = threading.BoundedSemaphore(settings.concurrency)
        self.stopping: Callable[[], bool] = lambda: False  # the engine's: no upload starts after it
        # Held by whoever rewrites a published file's sidecar from its row (a Baidu refresh
        # until its record, a restored sidecar) or changes the row's path (a move, a
        # deletion): so none of them writes from a row another is about to change. It is
        # taken before the journal's lock: a `Journal.batch` goes inside it, never around it
        # (the engine's take-in), and it is reentrant because a move happens in such a batch.
        self.sidecar_lock = threading.RLock()
        self._pausing = threading.Lock()  # see `_pause_once` and `note_transient_failure`
        # Set when a reload built the next pipeline: a file this one still holds is left to
        # that one, and an answer to a request sent with the old configuration (a wrong key
        # since corrected) pauses nothing: the new configuration gets its own try.
        self.superseded = False
        self.quotas = {
            name: QuotaGate(journal, f"imageban:{name}", host.quota, host.quota_reset_tz, clock)
            for name, host in settings.hosts.items()
        }

    # -- deciding --------------------------------------------------------------------

    def folder_for(self, path: str) -> FolderSettings | None:
        return self.resolver.folder_for(Path(path))

    def intake(self, path: str, *, settled: bool, row: FileRow | None, busy: Collection[int] = ()) -> Intake:
        """Decide what a finished (or, unless `settled`, possibly unfinished) file needs.

        `row` is the file's journal row (None: the journal does not know it), which the
        caller has just read; `busy` are the files workers hold (not to be moved under them).
        """
        folder = self.folder_for(path)
        if folder is None or not _publishable(path, folder.path):
            return Intake.IGNORED
        root = str(folder.path)
        try:
            info = os.lstat(path)  # a symlink is not followed: it may lead out of the folder
        except FileNotFoundError:
            return Intake.IGNORED
        except OSError as exc:
            return self._reject(path, root, None, f"cannot read {path}: {exc.strerror}; fix its permissions")
        if not stat.S_ISREG(info.st_mode) or not in_real_directory(path):  # reached through a link
            return Intake.IGNORED
        if row is not None and row.missing_since is not None:
            self.journal.mark_missing(row.id, None)
        if (
            row is not None
            and (row.size, row.mtime_ns) == (info.st_size, info.st_mtime_ns)
            and row.error_kind != "unreadable"  # a chmod may have made it readable: look again
        ):
            return Intake.UNCHANGED  # before the rules: a broken rule file must not fail a published file
        try:
            wanted = self.resolver.is_candidate(Path(path))
        except RuleFileError as exc:
            return self._reject(path, root, None, f"rule file problem: {exc}", kind="rules")
        if not wanted:
            return Intake.IGNORED
        suffix = os.path.splitext(path)[1].lower()
        if suffix in UNSUPPORTED_SUFFIXES:
            return self._reject(
                path,
                root,
                info,
                f"{suffix[1:].upper()} is not accepted by ImageBan (JPEG, PNG and GIF only): convert it",
            )
        if info.st_size == 0 and not settled:
            return Intake.WAIT  # a download's placeholder, maybe (see `Settler`): empty once it stays so
        try:
            image = inspect_image(Path(path))
        except FileNotFoundError:
            return Intake.IGNORED  # deleted meanwhile: that is a fact of its own
        except PermanentFileError as exc:
            if isinstance(exc.__cause__, PermissionError):  # its chmod is a `Changed`: taken in again
                retry = watchd_command(f"retry {shlex.quote(path)}", self.settings.config_path)
                again = f"; it is taken in again once they are fixed (or run `{retry}`)"
                return self._reject(path, root, info, exc.message + again, kind="unreadable")
            return self._reject(path, root, info, exc.message)
        if not image.complete:
            if not settled:
                return Intake.WAIT
            return self._reject(path, root, info, truncated(image.kind))
        try:
            return self._queue(path, root, row, info, busy)
        except FileNotFoundError:
            return Intake.IGNORED
        except PermanentFileError as exc:  # unreadable while being hashed
            return self._reject(path, root, info, exc.message)

    def ours(self, path: str) -> bool:
        """Whether `path` is a file watchd may publish: below a watched folder, see `_publishable`."""
        folder = self.folder_for(path)
        return folder is not None and _publishable(path, folder.path)

    def _queue(
        self, path: str, root: str, row: FileRow | None, info: os.stat_result, busy: Collection[int]
    ) -> Intake:
        if row is None:
            if self.journal.has_missing_of_size(info.st_size):
                source = self.journal.find_moved_source(sha256_file(Path(path)), info.st_size)
                if source is not None and source.id in busy:
                    return Intake.WAIT  # its worker still holds the old path: pair it after
                if source is not None:
                    self.move(source, path)
                    return Intake.MOVED
            self.journal.add(path, root, info.st_size, info.st_mtime_ns, None)
            return Intake.QUEUED
        digest = sha256_file(Path(path))
        if digest == row.uploaded_sha256:
            if row.state == j.FAILED:  # failed after its upload (e.g. its sidecar): finish it
                self.journal.requeue_sidecar(row.id, info.st_size, info.st_mtime_ns)
                return Intake.QUEUED
            self.journal.touch(row.id, info.st_size, info.st_mtime_ns)
            return Intake.UNCHANGED
        if self.journal.has_missing_of_size(info.st_size):  # `mv a.png b.png` over a published b.png
            source = self.journal.find_moved_source(digest, info.st_size)
            if source is not None and source.id != row.id:
                if source.id in busy or row.id in busy:
                    return Intake.WAIT  # a worker holds one of them: pair them after
                self.retire(row)  # b.png is deleted; a.png carries its upload over
                self.move(source, path)
                return Intake.MOVED
        self.journal.requeue(row.id, info.st_size, info.st_mtime_ns, None)
        return Intake.QUEUED

    def _reject(
        self, path: str, root: str, info: os.stat_result | None, reason: str, kind: str = "permanent"
    ) -> Intake:
        size, mtime = (info.st_size, info.st_mtime_ns) if info else (0, 0)
        self.journal.record_failed_new(path, root, size, mtime, reason, kind)
        log.warning("not uploaded: %s: %s", path, reason, extra={"path": path})
        return Intake.FAILED

    def rule_file_changed(self, rule_file: str) -> list[str]:
        """A `.watchd.yaml` was written or removed: drop its cached rules and return the files
        below it that failed because of a broken rule file, to be taken in again."""
        directory = os.path.dirname(rule_file)
        self.resolver.invalidate(Path(directory))
        failed = self.journal.failed_by_rules(directory)
        for row in failed:
            if row.uploaded() is None:
                self.journal.forget(row.id)  # never sent anywhere: taken in as new
            else:  # keeps its upload and Baidu id; a changed stamp makes intake look again
                self.journal.touch(row.id, -1, -1)
        return [row.path for row in failed if row.path is not None]

    # -- doing -----------------------------------------------------------------------

    def process(self, file_id: int) -> str:
        """Upload (if needed) and write the sidecar of one queued file; returns the outcome.

        Outcomes: "done", "failed", "retry" (scheduled later), "paused" (service paused),
        "gone" (the row or the file vanished meanwhile), "skipped" (not sent: `stopping`).
        """
        row = self.journal.get_by_id(file_id)
        if row is None or row.path is None:
            return "gone"
        try:
            rules = self.resolver.rules_for(Path(row.path))
        except RuleFileError as exc:
            self.journal.record_failed(row.id, "rules", f"rule file problem: {exc}")
            return "failed"
        if row.state == j.PENDING:
            upload = self._upload(row, rules)
            if isinstance(upload, str):
                return upload
            return self._finish(row, rules, upload)
        if row.state != j.UPLOADED:
            return "gone"
        if not is_regular_file(row.path):  # no sidecar next to nothing (an unmounted share?)
            return self._vanished(row)
        return self._finish(row, rules)

    def _upload(self, row: FileRow, rules: EffectiveRules) -> UploadResult | str:
        """Send the file; its result (not yet recorded), or the outcome when it was not sent."""
        assert row.path is not None
        path = Path(row.path)
        service = f"imageban:{rules.host}"
        if self.paused_until(service) is not None:  # checked again in _send; this spares the read
            return self._defer_while_paused(row, service)
        if "id" not in template_fields(rules.sidecar_name):  # its sidecar's name is known already
            try:
                self._sidecar_target(row, rules)
            except (OSError, ValueError) as exc:  # found before an upload that could not be used
                return self._unpublishable(row, None, _no_sidecar(exc))
        try:
            loaded = load_image(path)
            if not loaded.info.complete:
                raise PermanentFileError(truncated(loaded.info.kind))
        except FileNotFoundError:
            return self._vanished(row)
        except PermanentFileError as exc:
            self.journal.record_failed(row.id, "permanent", exc.message)
            log.warning("not uploaded: %s: %s", path, exc.message)
            return "failed"
        with self.upload_slots:
            if self.stopping() or self.superseded:  # it waited for a slot: left queued, unclaimed
                return "skipped"
            return self._send(row, rules, loaded)

    def _send(self, row: FileRow, rules: EffectiveRules, loaded: LoadedImage) -> UploadResult | str:
        """Claim and send a loaded file, holding an upload slot from the pause check to the
        answer: a pause that began while this file waited for a slot stops it here. With
        today's quota taken by uploads still in flight, it waits for their outcome."""
        service = f"imageban:{rules.host}"
        quota = self.quotas[rules.host]
        while True:
            if self.paused_until(service) is not None:
                return self._defer_while_paused(row, service)
            with quota.hold() as reservation:
                if reservation is not None:
                    return self._claim_and_send(row, rules, loaded, reservation)
            if not quota.wait_for_room():
                break
        reason = f"daily quota of {quota.limit} uploads used up; resumes at {_clock_time(quota.reset_at())}"
        if self._pause_once(service, DAILY_QUOTA, quota.reset_at(), reason):
            log.warning("%s: %s (daily_quota in the config); uploads stay queued", service, reason)
        return self._defer(row, j.PENDING, DAILY_QUOTA, reason, quota.reset_at())

    def _claim_and_send(
        self, row: FileRow, rules: EffectiveRules, loaded: LoadedImage, reservation: tuple[str, str]
    ) -> UploadResult | str:
        """Record the intent with its quota reservation, then upload (quick retries included)."""
        assert row.path is not None
        path = Path(row.path)
        quota = self.quotas[rules.host]
        self.journal.claim_upload(row.id, loaded.sha256, reservation)
        request = UploadRequest(path, path.name, rules.album, loaded.info, loaded.content)
        host = self.hosts[rules.host]
        try:
            # Not idempotent: an upload that got no answer may be stored, so it waits for the backoff.
            uploaded = self.retry.call(
                lambda: host.upload(request),
                f"upload of {path}",
                service=quota.service,
                paused=lambda: self.stopping() or self.paused_until(quota.service) is not None,
                idempotent=False,
            )
        except ServiceError as exc:
            if not exc.may_have_used_quota:
                quota.give_back(reservation)
            return self._upload_failed(row, quota.service, exc)
        except FileNotFoundError:
            self.journal.record_retry(row.id, j.PENDING, "transient", "file vanished during upload", 0)
            return self._vanished(row)
        self.retry.note_success(quota.service)
        log.debug("uploaded %s → %s", path, uploaded.link, extra={"path": str(path)})
        return UploadResult(rules.host, uploaded, loaded.sha256, utc_now())

    def _vanished(self, row: FileRow) -> str:
        """The original disappeared under a worker: marked vanished (not due again), so it is
        paired as a move or retired as a deletion, like one the watcher saw go."""
        if row.missing_since is None:
            self.journal.mark_missing(row.id, self.clock())
        return "gone"

    def _upload_failed(self, row: FileRow, service: str, exc: ServiceError) -> str:
        if self.superseded and isinstance(exc, ConfigurationError):  # sent with the key a reload replaced
            log.warning("upload of %s, sent before the reload, was refused: %s; tried again", row.path, exc)
            return self._defer(row, j.PENDING, "configuration", str(exc), 0.0, outcome="retry")
        if isinstance(exc, PermanentFileError):
            self.journal.record_failed(row.id, "permanent", exc.message)
            log.warning("not uploaded: %s: %s", row.path, exc)
            return "failed"
        if isinstance(exc, QuotaError):
            quota = self.quotas[service.split(":", 1)[1]]
            reason = f"{exc}; resumes at {_clock_time(quota.reset_at())}"
            if self._pause_once(service, "quota", quota.reset_at(), reason):
                log.error(
                    "%s: daily quota reached; uploads wait until %s", service, _clock_time(quota.reset_at())
                )
            return self._defer(row, j.PENDING, "quota", reason, quota.reset_at())
        if isinstance(exc, ConfigurationError):
            reason = f"{exc}; uploads to it go on {AFTER_THE_CONFIG_IS_FIXED}"
            if self._pause_once(service, "configuration", None, reason):
                log.error("%s paused: %s", service, reason)
            return self._defer(row, j.PENDING, "configuration", reason, self.clock() + CONFIG_PAUSE_RECHECK)
        retry_at = self.retry.next_attempt_at(row.attempts + 1, exc)
        log.warning(
            "upload of %s deferred until %s: %s; it stays queued (if this persists, check the "
            "network and api_url)",
            row.path,
            _clock_time(retry_at),
            exc,
            extra={"path": row.path},
        )
        if not self.superseded:  # an outage seen with the old configuration (api_url) may be over
            self.note_transient_failure(service, exc)
        return self._defer(row, j.PENDING, "transient", str(exc), retry_at, outcome="retry")

    def note_transient_failure(self, service: str, exc: ServiceError) -> None:
        """An item for `service` failed after its quick retries (an upload here, a Baidu call in
        the batcher); from the second in a row, pause the service for an outage and say so.

        Counted and recorded as one step: a failure counted after the one that pauses must not
        free its upload slot before the pause is in the journal, where the next upload looks."""
        with self._pausing:
            if (until := self.retry.note_failure(service, exc)) is None:
                return
            self.journal.pause(service, "outage", until, f"down or overloaded: {exc}")
        log.warning(
            "%s looks down (items fail one after another): nothing is sent to it until %s; the queue is kept",
            service,
            _clock_time(until),
        )

    def _pause_once(self, service: str, kind: str, until: float | None, reason: str) -> bool:
        """Pause `service` for `kind` (until `until`, None: until a reload); False when another
        upload just did: each of those in flight meets the same answer, and one line says it."""
        with self._pausing:
            paused = self.paused_until(service) is not None  # lifts a pause that has run out
            if paused and any(p.name == service and p.kind == kind for p in self.journal.pauses()):
                return False
            self.journal.pause(service, kind, until, reason)
            return True

    def _defer_while_paused(self, row: FileRow, service: str) -> str:
        """Wait out the service's pause. Files carry the pause's kind: a new configuration (a
        corrected key or `api_url`) lifts a configuration or outage pause and lets the files
        that waited for it go at once; those waiting for a quota reset wait on."""
        kind = next((p.kind for p in self.journal.pauses() if p.name == service), "paused")
        return self._defer(row, j.PENDING, kind, f"{service} is paused", self._pause_end(service))

    def _defer(
        self, row: FileRow, state: str, kind: str, reason: str, at: float, outcome: str = "paused"
    ) -> str:
        self.journal.record_retry(row.id, state, kind, reason, at)
        return outcome

    def _finish(self, recorded: FileRow, rules: EffectiveRules, upload: UploadResult | None = None) -> str:
        """Write the sidecar and record it (with `upload`, the upload too, in one transaction).

        `recorded` is the row as the journal holds it, `upload` a fresh upload it does not hold
        yet. Whatever goes wrong before that transaction, a fresh upload is recorded first, so
        it is never sent again.
        A sidecar name that leaves out {name} ("{stem}.txt") may be the one of two files
        (cat.png, cat.jpg): then the check that it is no other's, the write and the record go
        one file at a time, so the second sees the first's record and fails instead of both
        writing it. Names with {name} cannot collide, and stay free of the lock.
        """
        if "name" in template_fields(rules.sidecar_name):
            return self._write_and_record(recorded, rules, upload)
        with self.sidecar_lock:
            return self._write_and_record(recorded, rules, upload)

    def _write_and_record(self, recorded: FileRow, rules: EffectiveRules, upload: UploadResult | None) -> str:
        row = recorded if upload is None else recorded.with_upload(upload)
        try:
            push, push_error = self._push_payload(row, rules)
            sidecar = self.write_sidecar(row, rules)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return self._unpublishable(row, upload, _no_sidecar(exc))
            reason = (
                f"cannot write the sidecar next to {row.path}: {exc.strerror}; "
                "free disk space or make the folder writable (retrying)"
            )
            log.error("%s", reason)
            if upload is not None:
                self.journal.record_uploaded(row.id, upload)
            retry_at = self.retry.next_attempt_at(row.attempts + 1)
            self.journal.record_retry(row.id, j.UPLOADED, "disk", reason, retry_at)
            return "retry"
        except ValueError as exc:  # the sidecar name template cannot name this file's sidecar
            return self._unpublishable(row, upload, _no_sidecar(exc))
        except BaseException:
            if upload is not None:
                self.journal.record_uploaded(row.id, upload)
            raise
        if row.sidecar_path and row.sidecar_path != str(sidecar):  # before the record: see `move`
            self._remove_old_sidecar(row.sidecar_path)
        elif not row.sidecar_path and upload is not None:  # one named by the last upload's {id}
            self._remove_unrecorded_sidecar(recorded, rules, keep=sidecar)
        if upload is None:
            self.journal.record_done(row.id, str(sidecar), push, push_error)
        else:
            self.journal.record_published(row.id, upload, str(sidecar), push, push_error)
        log.info("published %s → %s (sidecar %s)", row.path, row.link, sidecar.name, extra={"path": row.path})
        return "done"

    def _unpublishable(self, row: FileRow, upload: UploadResult | None, reason: str) -> str:
        """No sidecar can be written for this file as it is named: failed, its upload kept.
        A sidecar it still records is of a name it no longer has (a move kept it until the
        new one was written, see `_move`): it goes, or it would name a file that is not there."""
        log.warning("not published: %s: %s", row.path, reason)
        if row.sidecar_path:
            self._remove_old_sidecar(row.sidecar_path)
        if upload is not None:
            self.journal.record_uploaded(row.id, upload)
        self.journal.record_failed(row.id, "permanent", reason, sidecar_removed=bool(row.sidecar_path))
        return "failed"

    def _sidecar_target(self, row: FileRow, rules: EffectiveRules) -> Path:
        """Where the sidecar of `row` goes; ValueError if its name cannot be one (see
        `sidecar_path`, or it names an image), OSError(ENAMETOOLONG) if it is too long."""
        assert row.path is not None
        target = sidecar_path(Path(row.path), rules.sidecar_name, self._context(row))
        if candidate_name(target.name):  # e.g. "{stem}": cat.png.png's sidecar would be cat.png
            raise ValueError(
                f"sidecar name template {rules.sidecar_name!r} names an image ({target.name}), "
                "and originals are never overwritten"
            )
        if len(os.fsencode(target.name)) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), target.name)
        return target

    def write_sidecar(self, row: FileRow, rules: EffectiveRules | None = None) -> Path:
        """(Re)write the sidecar of an uploaded file from its journal row; returns its path."""
        assert row.path is not None
        path = Path(row.path)
        rules = rules or self.resolver.rules_for(path)
        uploaded = row.uploaded()
        assert uploaded is not None and row.host is not None
        target = self._sidecar_target(row, rules)
        if str(target) != row.sidecar_path and os.path.lexists(target):  # e.g. "{stem}.txt"
            owner = self.journal.sidecar_owner(str(target), row.id)
            if owner is not None:
                raise ValueError(
                    f"{target.name} is already the sidecar of {os.path.basename(owner)} (sidecar name "
                    f"template {rules.sidecar_name!r}; {{name}} keeps the two apart)"
                )
        record = SidecarRecord(
            original=path,
            link=uploaded.link,
            short_link=uploaded.short_link,
            remote_id=uploaded.remote_id,
            host=row.host,
            sha256=row.uploaded_sha256 or "",
            size=row.size,
            resolution=uploaded.resolution,
            uploaded_at=row.uploaded_at or "",
            baidu_id=row.baidu_id if row.pushed_at else None,
            pushed_at=row.pushed_at,
        )
        write_atomic(target, render_sidecar(rules.sidecar_format, record))
        return target

    def restore_sidecar(self, path: str) -> None:
        """A published file's sidecar went missing (deleted, or lost in a power cut), or does
        not show its Baidu submission yet (its refresh failed, or a crash came first): rewrite
        it from the journal, which settles any refresh it waited for."""
        with self.sidecar_lock:
            row = self.journal.get(path)
            if row is None or row.state != j.DONE:
                return
            try:
                self.write_sidecar(row)
            except (OSError, RuleFileError, ValueError) as exc:
                log.error("the sidecar of %s cannot be rewritten: %s", path, exc)
                return
            self.journal.sidecar_refreshed(row.id)
        log.info("rewrote the sidecar of %s", path)

    def _context(self, row: FileRow) -> dict[str, str]:
        assert row.path is not None
        context = file_context(Path(row.path), Path(row.root))
        context.update(link=row.link or "", short_link=row.short_link or "", id=row.remote_id or "")
        return context

    def _push_payload(
        self, row: FileRow, rules: EffectiveRules
    ) -> tuple[dict[str, object] | None, str | None]:
        """The Baidu item for this file, validated now so a doomed request is never sent."""
        if self.settings.baidu is None or not rules.baidu:
            return None, None
        try:
            return self._item(row, rules), None
        except (PermanentFileError, ValueError) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else str(exc)
            log.warning("not submitted to Baidu: %s: %s", row.path, reason)
            return None, reason

    def _item(self, row: FileRow, rules: EffectiveRules) -> dict[str, object]:
        """The validated Baidu item of `row` under `rules`; raises if Baidu would refuse it."""
        context = self._context(row)
        item = PushItem(
            id=row.baidu_id,
            title=make_title(render(rules.title, context), context["folder"]),
            objurl=encode_url(row.link or ""),
            fromurl=encode_url(render_url(rules.fromurl, context)),
            edit_time=row.mtime_ns // 1_000_000_000,
            tags=tuple(rules.tags),
            copyright=rules.copyright,
            modify=False,  # decided when it is sent: `Outbox.mark_sending`
        )
        validate_push_item(item)
        return asdict(item)

    # -- moves and deletions -----------------------------------------------------------

    def move(self, row: FileRow, dest: str) -> bool:
        """The original moved inside the watched folders: no re-upload, the sidecar follows.

        The new sidecar is written and the old one removed before the journal records the
        move; a crash before that record leaves the old path vanished and the new one
        unknown, which reconciliation pairs as the same move again. Once recorded, nothing
        would remember the old sidecar, so it must be gone by then.
        Returns whether the move queued a Baidu push (see `_push_after_move`).
        """
        with self.sidecar_lock:
            row = self.journal.get_by_id(row.id) or row  # with a Baidu refresh recorded just now
            return self._move(row, dest)

    def _move(self, row: FileRow, dest: str) -> bool:
        folder = self.folder_for(dest)
        assert folder is not None
        root = str(folder.path)
        moved = replace(row, path=dest, last_path=dest, root=root)
        sidecar: str | None = None
        if row.state == j.DONE:
            try:
                sidecar = str(self.write_sidecar(moved))
            except (OSError, RuleFileError, ValueError) as exc:
                log.error("moved %s → %s but could not rewrite its sidecar: %s", row.last_path, dest, exc)
                # The old sidecar stays recorded, so writing the new one later removes it. One
                # transaction: a kill between the two would leave it done, with that old sidecar.
                with self.journal.batch():
                    self.journal.move(row.id, dest, root, row.sidecar_path)
                    self.journal.record_retry(row.id, j.UPLOADED, "disk", str(exc), self.clock() + 10)
                return False
        if row.sidecar_path and row.sidecar_path != sidecar:
            self._remove_old_sidecar(row.sidecar_path)
        elif not row.sidecar_path:  # one written by a run killed before recording it stays behind
            self._remove_sidecar_left_at_source(row, keep=sidecar)
        push = self._push_after_move(row, moved) if sidecar is not None else None
        with self.journal.batch():  # one transaction with what the move settles
            self.journal.move(row.id, dest, root, sidecar, push)
            if push is None and self._submits(moved) is False:  # drafts: what was not sent is not
                self.journal.cancel_unsent_push(row.id)
            if sidecar is not None:  # written from the row: it shows any submission a refresh waited for
                self.journal.sidecar_refreshed(row.id)
            elif row.state == j.FAILED and row.uploaded() is not None and row.sha256 == row.uploaded_sha256:
                # It failed after its upload for want of a sidecar its old name could not have
                # (too long, another file's): the new name gets its try, without a second upload.
                self.journal.requeue_sidecar(row.id, row.size, row.mtime_ns)
        resubmitted = " (Baidu re-submission queued)" if push is not None and row.baidu_may_hold else ""
        log.info("moved %s → %s (no re-upload)%s", row.last_path, dest, resubmitted)
        return push is not None

    def rerender_queued_pushes(self, directory: str | None = None) -> int:
        """Bring the Baidu pushes not sent yet (of files at or below `directory`) in line with
        the rules as they are now (a reload, a rule file saved): a new title or tags go out
        with them, and a folder made `baidu: false` sends nothing. Returns how many changed."""
        changed = 0
        pushes = self.journal.queued_pushes(directory)
        files: dict[int, FileRow] = {}
        for start in range(0, len(pushes), RERENDER_CHUNK):  # one query a chunk, not one a push
            files.update(self.journal.get_by_ids([p.file_id for p in pushes[start : start + RERENDER_CHUNK]]))
        for push in pushes:
            row = files.get(push.file_id)
            if row is None or row.path is None or row.state != j.DONE:
                continue  # its own step (an upload, a sidecar) builds its item again anyway
            try:
                rules = self.resolver.rules_for(Path(row.path))
            except RuleFileError:
                continue  # reported with the file; its item waits for a fix
            if not rules.baidu:
                self.journal.cancel_unsent_push(row.id)
            elif (item := self._push_payload(row, rules)[0]) is not None and item != push.payload:
                self.journal.update_unsent_push(row.id, item)
            else:
                continue
            changed += 1
        return changed

    def _submits(self, row: FileRow) -> bool | None:
        """Whether the rules where `row` is submit it to Baidu (None: its rule file is broken)."""
        try:
            return self.resolver.rules_for(Path(row.last_path)).baidu
        except RuleFileError:
            return None

    def _push_after_move(self, before: FileRow, moved: FileRow) -> dict[str, object] | None:
        """The Baidu push a move of a published file calls for, if any.

        A first submission where the new place's rules want one and Baidu holds nothing yet
        (drafts → public), or a re-submission when the item comes out differently at the new
        place: the title, source page, tags or copyright follow the file's name and folder,
        so "IMG_0412.jpg" renamed "harbour at dawn.jpg" is found by its new name. A push not
        sent yet just takes the new item.
        """
        if self.settings.baidu is None:
            return None
        try:
            push, _error = self._push_payload(moved, self.resolver.rules_for(Path(moved.last_path)))
        except RuleFileError:
            return None  # the file's sidecar is retried and reported; the push waits for a fix
        if push is None or not (before.baidu_may_hold or self.journal.push_queued(before.id)):
            return push
        try:
            old_place = replace(before, path=before.last_path)
            submitted = self._item(old_place, self.resolver.rules_for(Path(before.last_path)))
        except (RuleFileError, PermanentFileError, ValueError):
            submitted = None  # what was submitted cannot be rebuilt: submit what holds now
        return None if submitted == push else push

    def retire(self, row: FileRow) -> bool:
        """The original is gone for good: remove its sidecar, keep a tombstone, queue withdrawal.

        What Baidu may hold is withdrawn unless `delete: false` where the file was last seen,
        even where its rules now say `baidu: false` (it was submitted from somewhere else, or
        before the rule changed). Returns whether a Baidu withdrawal may have been queued.
        A sidecar the journal never recorded (watchd was killed between writing and recording
        it) is removed as well, if it provably is this file's: see `_remove_unrecorded_sidecar`.
        """
        try:
            rules: EffectiveRules | None = self.resolver.rules_for(Path(row.last_path))
        except RuleFileError:
            rules = None
        # Queued even with no `baidu:` section now: one taken out for a while and put back
        # must find the withdrawals of what was deleted meanwhile (Baidu still shows those).
        withdraw = rules is None or rules.delete
        with self.sidecar_lock:
            if row.sidecar_path:
                self._remove_old_sidecar(row.sidecar_path)
            elif rules is not None:
                self._remove_unrecorded_sidecar(row, rules)
            self.journal.tombstone(row.id, withdraw)
        withdrawn = withdraw and row.baidu_may_hold  # what the journal's tombstone decides from
        log.info("deleted: %s%s", row.last_path, " (withdrawal from Baidu queued)" if withdrawn else "")
        return withdraw

    def _remove_unrecorded_sidecar(
        self, row: FileRow, rules: EffectiveRules, keep: Path | None = None
    ) -> None:
        """`row` records no sidecar, yet watchd may have written one and been killed before
        recording it: remove the file `rules` name for the row's last path and recorded upload
        if it provably is that sidecar (`written_for`) and is neither `keep` nor another file's
        sidecar. Anything else of that name is not watchd's: it stays, with a warning.
        """
        if row.uploaded() is None and (row.sha256 is None or "id" in template_fields(rules.sidecar_name)):
            return  # nothing was sent, or its sidecar is named by an id the journal never got
        try:
            context = self._context(replace(row, path=row.last_path))
            target = sidecar_path(Path(row.last_path), rules.sidecar_name, context)
        except ValueError:  # no longer in its folder, or a template that names no file here
            return
        if target == keep or not os.path.lexists(target) or self.journal.sidecar_owner(str(target), row.id):
            return
        name = os.path.basename(row.last_path)
        if not written_for(target, rules.sidecar_format, row.link, row.remote_id, row.sha256, name):
            log.warning(
                "kept %s: it may be a sidecar of %s that watchd wrote before it was stopped, but its "
                "content does not prove it; remove it by hand if it is",
                target,
                row.last_path,
            )
            return
        self._remove_old_sidecar(str(target))
        log.info("removed %s, a sidecar of %s an interrupted run had not recorded", target, row.last_path)

    def _remove_sidecar_left_at_source(self, row: FileRow, keep: str | None) -> None:
        """A file moved before any sidecar of it was recorded: one an interrupted run wrote at
        its old path (see `_remove_unrecorded_sidecar`) would otherwise stay there for good."""
        try:
            rules = self.resolver.rules_for(Path(row.last_path))
        except RuleFileError:
            return  # what the old folder's rules name cannot be known: nothing is removed
        self._remove_unrecorded_sidecar(row, rules, keep=None if keep is None else Path(keep))

    def _remove_old_sidecar(self, sidecar: str) -> None:
        """A sidecar that no longer belongs to a file: removed, or left with a warning (the
        file's own state is recorded regardless)."""
        try:
            remove_sidecar(Path(sidecar))
        except OSError as exc:
            log.warning("cannot remove the old sidecar %s: %s; remove it by hand", sidecar, exc.strerror)

    # -- retries and services ----------------------------------------------------------

    def paused_until(self, service: str) -> float | None:
        """When a paused service resumes (inf for a configuration pause), or None if it is not paused."""
        return self.journal.paused_until(service, self.clock())

    def _pause_end(self, service: str) -> float:
        until = self.paused_until(service) or 0.0
        return until if until != float("inf") else self.clock() + CONFIG_PAUSE_RECHECK


def _no_sidecar(exc: OSError | ValueError) -> str:
    """Why no sidecar can be written for a file as it is named, and what to do."""
    if isinstance(exc, OSError):
        return (
            f"its sidecar's name would be over {NAME_MAX} bytes, longer than a file name may be: "
            "shorten the file's name, or sidecar.name in the rules"
        )
    return f"{exc}: change sidecar.name in the rules"


def truncated(kind: str) -> str:
    """Why a file that ends before its image does is not published, and what to do. Garbage
    after a valid header ends the same way (a segment longer than the file): it may be either."""
    return (
        f"truncated or damaged {kind.upper()}: the file ends before the image does (an interrupted "
        "copy?); copy it again, or export it again"
    )


def _clock_time(when: float) -> str:
    """`when` in local time for a log line, to the second: cut to the minute, a pause logged
    at 07:14:06 to last until 07:14:24 read "until 07:14", a time already past."""
    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
