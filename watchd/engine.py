"""The daemon: wires watcher, journal, upload workers and the Baidu batcher; owns the lifecycle.

One loop thread decides everything (facts from the watcher, reconciliation, settling,
dispatch); upload workers and the batcher only do work the journal already records, and
report back through the same fact queue. So no decision is ever made twice at once, and
whatever is in the journal can be resumed by a new process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from watchd import journal as j
from watchd.batcher import SERVICE as BAIDU
from watchd.batcher import BaiduBatcher
from watchd.config import Settings, baidu_without_section, load_settings
from watchd.departures import Departures, FolderAvailability
from watchd.errors import ConfigError
from watchd.guard import DeleteGuard
from watchd.hosts.base import Host
from watchd.hosts.imageban import ImageBanHost
from watchd.http import HttpClient
from watchd.indexers.baidu import BaiduIndexer
from watchd.instance import InstanceLock
from watchd.journal import Journal
from watchd.logs import add_secrets
from watchd.metrics import GaugeValues, Metrics, MetricsServer, journal_gauges
from watchd.pipeline import Intake, Pipeline, candidate_name
from watchd.quota import QuotaGate
from watchd.rules import RULE_FILE_NAME, RuleFileError
from watchd.scan import printable, reconcile, recordable
from watchd.schema import DAILY_QUOTA
from watchd.settling import Settler
from watchd.systemd import Notifier, WatchdogPinger
from watchd.upkeep import FolderUpkeep
from watchd.watcher import (
    Arrived,
    Changed,
    DirArrived,
    DirChanged,
    DirGone,
    Fact,
    Finished,
    FolderBack,
    Gone,
    Moved,
    Rescan,
)
from watchd.workers import Done, UploadWorkers

log = logging.getLogger(__name__)

JOURNAL_PROBE_INTERVAL = 1.0  # while the journal cannot be written, how often it is tried again
STATUS_INTERVAL = 1.0
TAKE_IN_CHUNK = 32
# The longest the loop handles facts in one turn before it pings the watchdog and looks at
# a stop request again: a start-up backlog of any size is taken in over many turns.
TURN_BUDGET = 0.2
# How long a stop waits for a Baidu call in flight once the uploads are done: not worth more,
# as its items stay "sending" in the journal, are queued again at the next start and sent
# again (a push Baidu already has counts as done).
BAIDU_STOP_GRACE = 1.0
# A file moved in from another watched folder arrives before the other folder's watch
# reports it gone (watchdog holds that half ~0.05 s to pair renames): wait past that, so
# the two halves are paired as a move and the file is not uploaded a second time.
ARRIVAL_WAIT = 0.3


class Progress(Protocol):
    """Told how much work a scan found and each time a file is handled (`watchd sync`'s bar)."""

    def found(self, n: int) -> None: ...

    def advance(self, outcome: str, path: str) -> None: ...


@dataclass(frozen=True)
class _TakeIn:
    """Files a reconciliation found, taken in a chunk at a time so that workers' reports
    (queued behind) are heard between chunks and the workers never run dry."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class _Control:
    """A request to the loop: "reload", or "wake" (a stop was asked for, or the Baidu drain ended)."""

    what: str


class Engine:
    """Runs the pipeline for one configuration: `run()` as a daemon, or `sync()` as one pass."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        grace: float | None = None,
        stop_timeout: float = 20.0,  # the whole of a stop, Baidu included (deploy.md promises 20 s)
        notifier: Notifier | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        # A vanished file waits this long for its other half (a move whose destination
        # arrives as a settled new file) before it is treated as deleted.
        self.grace = grace if grace is not None else settings.settle + 1.5
        self.stop_timeout = stop_timeout
        self.notifier = notifier or Notifier()
        self.progress = progress
        self.instance = InstanceLock(settings.state_dir)
        self.journal = Journal.open(settings.state_dir)
        self.http = HttpClient(timeout=_longest_timeout(settings), connect_timeout=10.0)
        self.outcomes: Counter[str] = Counter()
        self.left_queued = 0
        self.held_deletes = 0  # after `sync`: deletions the mass-delete guard holds
        self.unavailable: list[str] = []  # after `sync`: watched folders it could not reconcile
        self.last_error = ""
        self._facts: queue.SimpleQueue[Fact | Done | _TakeIn | _Control] = queue.SimpleQueue()
        self._stopping = False
        self._reload_asked = False  # SIGHUP: heard at the next turn, not behind queued facts
        self._arrived_dirs: dict[str, float] = {}  # directory moved in → when to reconcile it
        self._stop_signal: int | None = None  # the signal that asked for the stop
        self._not_taken_in = 0  # files a reconciliation found that a stop left unlooked-at
        self._take_ins_queued = 0  # chunks of found files not taken in yet (see _retire_departed)
        self._journal_retry_at: float | None = None  # while the journal cannot be written: next try
        self.workers = UploadWorkers(
            settings.concurrency,
            lambda file_id: self.pipeline.process(file_id),
            self._facts.put,
            self.journal,
            stopping=lambda: self._stopping,
            clock=clock,
        )
        self._settler = Settler(settings.settle, clock)
        self._available = FolderAvailability(self.journal)
        self._guard: DeleteGuard | None = None
        self._status_dirty = False
        self._status_sent = 0.0
        self._pauses_shown: tuple[tuple[str, str], ...] = ()  # in the last STATUS=
        self._pinger = WatchdogPinger(self.notifier)
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        self._dirty: set[int] = set()
        # Moves and deletions of files a worker holds wait until it is done (`_hold`); a path
        # they lead to maps to the file whose facts it belongs with (a rename of a rename).
        self._after_work: dict[int, list[Fact]] = {}
        self._held_paths: dict[str, int] = {}
        self._unrecordable: set[str] = set()  # paths already warned about
        self.upkeep = FolderUpkeep(settings, self._available, self._facts.put, clock)
        self._batcher_thread: threading.Thread | None = None
        self._drain: threading.Thread | None = None  # see _drained
        self._drain_error: Exception | None = None
        self._drain_news = 0  # the batcher's `news` when the last drain began
        self._left_behind = False  # a stop left calls in flight behind (see _close)
        self.batcher: BaiduBatcher | None = None
        # One for the process, not one per configuration: a batcher (or worker) of the config
        # before a reload may still be finishing its call, and must not flush (or rewrite a
        # sidecar) at once with those of the new one (see BaiduBatcher.flush).
        self._flushing = threading.Lock()
        self._sidecar_lock = threading.RLock()
        self._build(settings)

    # -- wiring ------------------------------------------------------------------------

    def _build(self, settings: Settings) -> None:
        hosts: dict[str, Host] = {
            name: ImageBanHost(
                name,
                api_url=host.api_url,
                client=self.http,
                client_id=host.client_id.get_secret_value() if host.client_id else None,
                secret_key=host.secret_key.get_secret_value() if host.secret_key else None,
                timeout=host.timeout,
            )
            for name, host in settings.hosts.items()
        }
        self.settings = settings
        self.upkeep.settings = settings
        self._settler.settle = settings.settle
        limits = settings.delete_guard
        if self._guard is None:
            self._guard = DeleteGuard(clock=self.clock)
        # Kept across reloads with new limits: its window of recent deletions must not reset.
        self._guard.max_files, self._guard.max_percent = limits.max_files, limits.max_percent
        self._guard.window = limits.window
        self.departures = Departures(
            self.journal,
            self._guard,
            self._available,
            grace=self.grace,
            clock=self.clock,
            config=settings.config_path,
        )
        self.pipeline = Pipeline(settings, self.journal, hosts, clock=self.clock, sleep=self.sleep)
        self.pipeline.sidecar_lock = self._sidecar_lock
        self.pipeline.stopping = lambda: self._stopping
        self.batcher = None
        if settings.baidu is not None:
            indexer = BaiduIndexer(
                app_id=settings.baidu.app_id.get_secret_value(),
                app_token=settings.baidu.app_token.get_secret_value(),
                api_base=settings.baidu.api_base,
                client=self.http,
                timeout=settings.baidu.timeout,
            )
            quota = QuotaGate(
                self.journal, BAIDU, settings.baidu.daily_quota, settings.baidu.quota_reset_tz, self.clock
            )
            self.batcher = BaiduBatcher(
                self.journal,
                indexer,
                self.pipeline,
                quota,
                linger=settings.baidu.linger,
                clock=self.clock,
                flushing=self._flushing,
            )

    def _start_threads(self, *, watch: bool) -> None:
        self.workers.start()
        self._start_batcher()
        if watch:
            self.upkeep.restart()

    def _start_batcher(self) -> None:
        if self.batcher is not None:
            self._batcher_thread = threading.Thread(
                target=self.batcher.run_forever, name="baidu", daemon=True
            )
            self._batcher_thread.start()

    def _let_batcher_go(self) -> None:
        """Tell the batcher to stop, without waiting for its call in flight (a reload): it
        ends in the background, and the next batcher flushes only after it (`_flushing`)."""
        if self.batcher is not None:
            self.batcher.stop()
        self._batcher_thread = None

    # -- entry points ------------------------------------------------------------------

    def run(self) -> int:
        """The daemon: watch, reconcile, work until SIGTERM/SIGINT; SIGHUP reloads."""
        self._install_signals(daemon=True)
        self._start(watch=True)
        self._start_metrics()
        self.notifier.ready(self._status_line())
        log.info("watching %d folders", len(self.settings.folders))
        self._loop(until_idle=False)
        return self._shutdown()

    def sync(self) -> int:
        """One pass: reconcile every folder and do all work due now.

        Returns 1 when anything failed in this pass or work is left undone: queued (a retry or
        a paused service), in a watched folder that is unavailable, or deletions held by the
        mass-delete guard (they wait for a person, whom a cron job's exit code must reach);
        else 0. SIGINT/SIGTERM stop it as they stop `run` (uploads in flight finish, so the
        next pass does not upload them twice); it then returns 128 + the signal's number.
        """
        self._install_signals(daemon=False)
        self._start(watch=False)
        self._loop(until_idle=True)
        self._wind_down()
        counts = self.journal.counts()
        self.left_queued = counts[j.PENDING] + counts[j.UPLOADING] + counts[j.UPLOADED]
        if self.settings.baidu is not None:  # without it, Baidu items wait for it to come back
            self.left_queued += self.journal.outbox_depth()  # Baidu items waiting (a pause, a retry)
        self.left_queued += self._not_taken_in
        self.held_deletes = self.journal.held_deletes()
        self.unavailable = [str(f.path) for f in self.settings.folders if not self._available(str(f.path))]
        self._close()
        if self._stop_signal is not None:
            log.warning(
                "sync stopped by %s: %d files or Baidu items left to do; the next `watchd sync` or "
                "`watchd run` continues them",
                signal.Signals(self._stop_signal).name,
                self.left_queued,
            )
            return 128 + self._stop_signal
        baidu_failed = self.batcher.outcomes["failed"] if self.batcher is not None else 0
        failed = self.outcomes["failed"] or self.outcomes["error"] or baidu_failed
        return 1 if failed or self.left_queued or self.held_deletes or self.unavailable else 0

    def _start(self, *, watch: bool) -> None:
        """Resume what a previous process left, start the threads, queue a full reconciliation."""
        _warn_of_dead_keys(self.settings)
        requeued = self.journal.recover()
        if any(requeued):
            log.info("resuming after an interruption: %d uploads and %d Baidu items requeued", *requeued)
        self._lift_pauses_a_new_configuration_may_fix()
        self.journal.rejudge_held_deletes()
        self._start_threads(watch=watch)
        self.upkeep.rescan_all()

    def _start_metrics(self) -> None:
        if self.settings.metrics is None:
            return
        host, port = self.settings.metrics.address
        self.metrics = Metrics(self._gauges)
        try:
            self._metrics_server = MetricsServer(self.metrics, host, port).start()
        except OSError as exc:
            log.error(
                "metrics endpoint %s not started: %s; change metrics.listen",
                self.settings.metrics.listen,
                exc,
            )
            return
        log.info("metrics at http://%s:%d/metrics", host, self._metrics_server.port)

    def _gauges(self) -> GaugeValues:
        """The journal's view, read at scrape time (the metrics thread; the journal locks)."""
        return journal_gauges(self.journal, self._quota_gates())

    def _quota_gates(self) -> list[QuotaGate]:
        """Every service's quota gate: the hosts', and Baidu's if it is configured."""
        gates = [*self.pipeline.quotas.values()]
        if self.batcher is not None:
            gates.append(self.batcher.quota)
        return gates

    def _lift_pauses_a_new_configuration_may_fix(self) -> None:
        """A new configuration (a start or a reload) deserves a new try, also of a service that
        looked down (it may have been a wrong `api_url`), with the files that failed one by one
        before it was taken to be down, and of one whose `daily_quota` was raised above what
        it used today. A quota the service itself said was used up stays paused."""
        gates = {gate.service: gate for gate in self._quota_gates()}
        outage = raised = False
        for pause in self.journal.pauses():
            gate = gates.get(pause.name)
            if pause.kind == DAILY_QUOTA and gate is not None and gate.room() != 0:
                self.journal.resume(pause.name)
                raised = True
            elif pause.kind in ("configuration", "outage"):
                self.journal.resume(pause.name)
                outage = outage or pause.kind == "outage"
        self.journal.release_deferred("configuration")
        self.journal.release_deferred("outage")
        if outage:
            self.journal.release_deferred("transient")
        if raised:
            self.journal.release_deferred(DAILY_QUOTA)

    def stop(self) -> None:
        """Ask the loop to stop (thread-safe; used by signal handlers and tests). Heard at the
        end of the turn, not behind the facts queued before it (a start-up backlog)."""
        self._stopping = True
        self._facts.put(_Control("wake"))

    def reload(self) -> None:
        """Ask the loop to reload the config (SIGHUP). Like a stop, heard at the next turn, not
        behind the facts queued before it: a large intake takes many turns."""
        self._reload_asked = True
        self._facts.put(_Control("wake"))

    def _install_signals(self, *, daemon: bool) -> None:
        """SIGTERM/SIGINT stop gracefully, a second one at once (`run` exits 0 either way, `sync`
        128 + the signal's number); for the `daemon`, SIGHUP reloads."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            if self._stop_signal is not None:
                log.warning(
                    "second %s: stopping now; unfinished work stays queued", signal.Signals(signum).name
                )
                if daemon:
                    os._exit(0)
                raise SystemExit(128 + signum)  # unwinding, `sync`'s progress bar gives the terminal back
            self._stop_signal = signum
            self.stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        if daemon:
            signal.signal(signal.SIGHUP, lambda _s, _f: self.reload())

    # -- the loop ----------------------------------------------------------------------

    def _loop(self, *, until_idle: bool) -> None:
        while not self._stopping:
            try:
                if self._turn(until_idle=until_idle):
                    return
            except sqlite3.Error as exc:
                if until_idle:
                    raise
                self._journal_trouble(exc)
            self._pinger.tick()
            self._report_status()

    def _turn(self, *, until_idle: bool) -> bool:
        """One turn of the loop: handle facts, timers and dispatch; True when idle (sync)."""
        try:
            fact = self._facts.get(timeout=self._timeout())
        except queue.Empty:
            fact = None
        # Tried before the facts, any of which may fail on the journal: a stream of them must
        # not keep it from being tried.
        journal_back = self._journal_back(self.clock())
        if self._reload_asked:
            self._reload_asked = False
            self._handle_safely(_Control("reload"))
        ends = time.monotonic() + TURN_BUDGET
        while fact is not None:
            if (screened := self._screen(fact)) is not None:
                self._handle_safely(screened)
            if self._stopping or time.monotonic() >= ends:  # the rest waits for the next turn
                break
            try:
                fact = self._facts.get_nowait()
            except queue.Empty:
                fact = None
        if not journal_back:  # nothing is due meanwhile; settled files wait in the settler
            return False
        now = self.clock()
        for path in self._settler.settled(now):
            self._intake(path, settled=True)
        for path in [path for path, due in self._arrived_dirs.items() if due <= now]:
            del self._arrived_dirs[path]
            self._rescan(path)
        self.upkeep.tick(now)
        self._retire_departed(now, force=until_idle)
        self._dispatch(now)
        return until_idle and self._idle(now)

    def _journal_trouble(self, exc: sqlite3.Error) -> None:
        """The journal cannot be written (full or read-only disk): all work waits for it as a
        whole, said once, however many writes fail meanwhile (each worker's file, each event);
        `_journal_back` tries it again every JOURNAL_PROBE_INTERVAL.

        SQLite rolls back what it could not write, so nothing is half-recorded; facts lost
        meanwhile are found again by the full reconciliation once it is back.
        """
        if self._journal_retry_at is not None:
            return
        self._journal_retry_at = self.clock() + JOURNAL_PROBE_INTERVAL
        log.error(
            "cannot write the journal %s (%s): free space on that disk or make it writable; "
            "watchd waits for it, trying every %.0f s, and loses nothing",
            self.journal.path,
            exc,
            JOURNAL_PROBE_INTERVAL,
        )
        self.notifier.status(f"journal not writable: {exc}")

    def _journal_back(self, now: float) -> bool:
        """Whether the journal can be written again, tried once its wait is over. A try is one
        small write, so a disk that stays full costs nothing; once it passes, interrupted
        uploads are queued again and every folder is reconciled."""
        if self._journal_retry_at is None:
            return True
        if now < self._journal_retry_at:
            return False
        try:
            self.journal.probe()
            self.journal.recover(exclude=self.workers.in_flight, outbox=False)
        except sqlite3.Error:
            self._journal_retry_at = now + JOURNAL_PROBE_INTERVAL
            return False
        self._journal_retry_at = None
        log.info("the journal %s can be written again; work resumes", self.journal.path)
        self._status_dirty = True
        self.upkeep.rescan_all()
        return True

    def _timeout(self) -> float:
        now = self.clock()
        if self._journal_retry_at is not None:  # nothing else is done until the journal is back
            deadlines = [self._journal_retry_at]
        else:
            deadlines = [*self._settler.deadlines(), *self.upkeep.deadlines(), *self._arrived_dirs.values()]
            if self.workers.free() > 0 and (due := self.journal.next_due_time()) is not None:
                deadlines.append(due)
            if self._departing(now):
                deadlines.append(now + self.grace)
            if self._status_dirty and self.notifier.enabled:
                deadlines.append(now + max(0.0, self._status_sent + STATUS_INTERVAL - time.monotonic()))
        ping = self._pinger.due_in()
        return max(0.005, min([30.0, 30.0 if ping is None else ping, *(d - now for d in deadlines)]))

    def _screen(self, fact: Fact | Done | _TakeIn | _Control) -> Fact | Done | _TakeIn | _Control | None:
        """Keep the journal away from paths it cannot hold (names that are not valid UTF-8):
        such a file is skipped with a warning, and a move to or from one is a deletion or a
        new file."""
        match fact:
            case Moved(src, dest) if not (recordable(src) and recordable(dest)):
                if not recordable(dest):
                    self._skip_unrecordable(dest)
                    return Gone(src) if recordable(src) else None
                return Arrived(dest)
            case Finished(path) | Arrived(path) | Changed(path) | Rescan(path) | DirArrived(path) if (
                not recordable(path)
            ):
                self._skip_unrecordable(path)
                return None
            case Gone(path) | DirGone(path) if not recordable(path):
                return None  # never journaled
        return fact

    def _skip_unrecordable(self, path: str) -> None:
        if path not in self._unrecordable:
            self._unrecordable.add(path)
            log.warning(
                "skipped %s: its name is not valid UTF-8, which the journal cannot record; rename it "
                "(convmv can convert a whole tree) and it is published",
                printable(path),
            )

    def _handle_safely(self, fact: Fact | Done | _TakeIn | _Control) -> None:
        """A bug met while handling one fact is logged, not fatal: the daemon keeps serving
        every other file, and reconciliation looks at this one again. Journal errors go on
        to the loop, which waits for the disk."""
        try:
            self._handle(fact)
        except sqlite3.Error:
            raise
        except Exception as exc:
            log.exception("internal error while handling %s; carrying on (please report this)", fact)
            self.outcomes["error"] += 1
            self.last_error = f"internal error: {type(exc).__name__}"

    def _handle(self, fact: Fact | Done | _TakeIn | _Control) -> None:
        match fact:
            case Finished(path) | Arrived(path) | Changed(path) | Gone(path) if (
                os.path.basename(path) == RULE_FILE_NAME
            ):
                self._rule_file_changed(path)
            case Moved(src, dest) if RULE_FILE_NAME in (os.path.basename(src), os.path.basename(dest)):
                for rule_file in {src, dest}:  # an editor saving by rename, or a rule file moved
                    if os.path.basename(rule_file) == RULE_FILE_NAME:
                        self._rule_file_changed(rule_file)
            case Finished(path):
                self._settler.forget(path)
                self._intake(path, settled=False)
            case Changed(path):
                self._note_change(path)
            case Arrived(path):  # taken in a moment later, once a move's other half has come
                self._note_change(path, wait=ARRIVAL_WAIT)
            case DirArrived(path):  # likewise for a directory's files
                self._arrived_dirs.setdefault(path, self.clock() + ARRIVAL_WAIT)
            case Moved(src, dest):
                self._moved(src, dest)
            case Gone(path) if path in self._held_paths:
                self._hold(self._held_paths.pop(path), fact)
            case Gone(path):
                self.departures.gone([self.journal.get(path)])
            case DirGone(path):
                if any(str(f.path) == path for f in self.settings.folders):
                    self.upkeep.folder_gone(path)  # watched anew once it is back (maybe already)
                else:
                    self.departures.gone(self.journal.under(path))
            case DirChanged():
                self.upkeep.look_again()  # it may be an unreadable directory made readable
            case FolderBack(path):
                self.journal.rejudge_held_deletes()  # files back in it are not deleted after all
                self._rescan(path)
            case Rescan(path):
                self._rescan(path)
            case _TakeIn(paths):  # the sidecar lock first, as the batcher takes them (a move)
                try:
                    with self.pipeline.sidecar_lock, self.journal.batch():
                        for file_path in paths:
                            self._intake(file_path, settled=False)
                finally:
                    self._take_ins_queued -= 1
                self._dispatch(self.clock())
            case Done(file_id, outcome, path, error):
                self._finished(file_id, outcome, path, error)
            case _Control("reload"):
                self._reload()

    def _rule_file_changed(self, rule_file: str) -> None:
        """Files the old rules failed are taken in again, and the directory is reconciled:
        files the old rules excluded have no journal row, so only a scan finds them."""
        for again in self.pipeline.rule_file_changed(rule_file):
            self._intake(again, settled=False)
        self.pipeline.rerender_queued_pushes(os.path.dirname(rule_file))
        self._facts.put(Rescan(os.path.dirname(rule_file)))

    def _intake(self, path: str, *, settled: bool) -> None:
        row = self.journal.get(path)
        if row is not None and row.id in self.workers.in_flight:
            self._dirty.add(row.id)
            return
        result = self.pipeline.intake(path, settled=settled, row=row, busy=self.workers.in_flight)
        if result is Intake.WAIT:
            self._note_change(path)
        elif result is Intake.FAILED:
            self._count("failed", path)
        elif result is Intake.MOVED and self.batcher is not None:
            self.batcher.pushes_queued()  # it may have been moved to where Baidu is wanted

    def _note_change(self, path: str, wait: float | None = None) -> None:
        if self.pipeline.ours(path):
            self._settler.changed(path, wait)

    def _hold(self, file_id: int, fact: Fact) -> None:
        """Keep a fact about a file a worker holds (its journal row is the worker's until then)."""
        self._after_work.setdefault(file_id, []).append(fact)
        if isinstance(fact, Moved):
            self._held_paths[fact.dest] = file_id

    def _moved(self, src: str, dest: str) -> None:
        if src in self._held_paths:  # renamed again before the first rename could be applied
            self._hold(self._held_paths.pop(src), Moved(src, dest))
            return
        row = self.journal.get(src)
        if row is None or (row.state == j.FAILED and row.uploaded() is None):
            if row is not None:
                self.journal.forget(row.id)  # never sent anywhere: nothing to carry over
            self._intake(dest, settled=False)
            return
        if not self.pipeline.ours(dest):  # moved out, or into a hidden directory (a Trash)
            self.departures.gone([row])
            return
        if row.id in self.workers.in_flight:  # the worker holds the old path: move once it is done
            self._hold(row.id, Moved(src, dest))
            return
        replaced = self.journal.get(dest)
        if replaced is not None and replaced.id != row.id and replaced.uploaded() is not None:
            if replaced.id in self.workers.in_flight:  # retire it once its worker is done
                self._hold(replaced.id, Moved(src, dest))
                return
            self._retire(replaced)  # `mv a.png b.png` over a published b.png: b is deleted
        if self.pipeline.move(row, dest) and self.batcher is not None:
            self.batcher.pushes_queued()

    def _departing(self, now: float) -> bool:
        """Whether vanished files wait to be retired: only in available folders, so a sync
        over an unmounted share ends instead of waiting for it."""
        roots = {row.root for row in self.journal.missing(older_than=now)}
        return any(self._available(root) for root in roots)  # each folder looked at once

    def _retire(self, row: j.FileRow) -> None:
        if self.pipeline.retire(row) and self.batcher is not None:
            self.batcher.wake()

    def _retire_departed(self, now: float, *, force: bool) -> None:
        """Retire the vanished files that are due, but none while files a reconciliation found
        wait to be taken in: one of them may be where a vanished file went (renamed while
        watchd was not looking), and only its intake pairs the two as a move. Retired first,
        the file would be withdrawn from Baidu and uploaded again under its new name."""
        if self._take_ins_queued:
            return
        for row in self.departures.due(now, force=force, in_flight=self.workers.in_flight):
            self._retire(row)

    def _rescan(self, path: str) -> None:
        folder = self.pipeline.folder_for(os.path.join(path, "x"))
        if folder is None:
            return
        root = Path(path)
        if not self._available(str(folder.path)):
            return
        found: list[str] = []
        selective: dict[str, bool] = {}  # directory → whether its rules leave files out
        now = self.clock()
        for difference in reconcile(self.journal, root, folder.recursive, candidate_name):
            if difference.kind == "missing":
                row = self.journal.get(difference.path)
                if row is not None and row.missing_since is None:
                    self.journal.mark_missing(row.id, now)
            elif difference.kind == "sidecar":
                self.pipeline.restore_sidecar(difference.path)
            elif difference.kind == "unrecordable":
                self._skip_unrecordable(difference.path)
            elif difference.kind == "unreadable":
                self.upkeep.unreadable(difference.path)
            elif difference.kind == "changed" or self._wanted(difference.path, selective):
                found.append(difference.path)
        log.info("reconciled %s: %d new or changed files", root, len(found))
        if self.progress is not None:
            self.progress.found(len(found))
        for start in range(0, len(found), TAKE_IN_CHUNK):
            self._take_ins_queued += 1
            self._facts.put(_TakeIn(tuple(found[start : start + TAKE_IN_CHUNK])))

    def _wanted(self, path: str, selective: dict[str, bool]) -> bool:
        """Whether a file the journal does not know is one to take in: an image its folder's
        rules exclude never gets a row, so every reconciliation finds it "new" again. Globs
        are matched only in directories whose rules leave files out (`selective`, filled as
        the walk goes): the walk is one turn of the loop, and most directories exclude nothing."""
        resolver = self.pipeline.resolver
        try:
            directory = os.path.dirname(path)
            if directory not in selective:
                selective[directory] = resolver.selects(Path(path))
            return not selective[directory] or resolver.is_candidate(Path(path))
        except RuleFileError:
            return True  # its intake records the rule file's problem

    # -- workers -----------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        """Hand due files to the workers, keeping each one's next file queued behind it (none
        while the journal cannot be written: each would fail on it)."""
        free = self.workers.free()
        if free > 0 and not self._stopping and self._journal_retry_at is None:
            self.workers.dispatch(self.journal.due_uploads(now, free, self.workers.in_flight))

    def _finished(self, file_id: int, outcome: str, path: str | None, error: str | None = None) -> None:
        seconds = self.workers.finished(file_id)
        if self.metrics is not None:
            self.metrics.observe(outcome, seconds)
        if outcome == "journal":  # its writes were rolled back: it is due again once the journal is back
            raise sqlite3.OperationalError(error or "a worker could not write the journal")
        held = self._after_work.pop(file_id, [])
        for fact in held:  # in the order they came: a rename of a rename, then maybe a deletion
            if isinstance(fact, Moved):
                self._held_paths.pop(fact.dest, None)
            self._handle_safely(fact)
        if outcome != "done" or file_id in self._dirty or held:  # the path may have moved
            row = self.journal.get_by_id(file_id)
            path = row.path if row is not None else None
        self._count(outcome, path or f"#{file_id}")
        if outcome == "done" and self.batcher is not None:
            self.batcher.pushes_queued()
        if file_id in self._dirty:
            self._dirty.discard(file_id)
            if path is not None:
                self._intake(path, settled=False)

    def _count(self, outcome: str, path: str) -> None:
        self.outcomes[outcome] += 1
        if outcome in ("failed", "retry", "paused"):
            row = self.journal.get(path)
            self.last_error = f"{path}: {row.reason}" if row and row.reason else path
        if self.progress is not None and outcome != "skipped":  # not sent: a stop left it queued
            self.progress.advance(outcome, path)
        self._status_dirty = True

    def _report_status(self) -> None:
        """Send STATUS= at most once a second, and only under systemd: it costs a few queries.
        A service paused or resumed (the batcher's doing too, not only an upload's) is news."""
        if not self.notifier.enabled:
            return
        if self._pauses() != self._pauses_shown:
            self._status_dirty = True
        now = time.monotonic()
        if self._status_dirty and now - self._status_sent >= STATUS_INTERVAL:
            self._status_dirty = False
            self._status_sent = now
            self.notifier.status(self._status_line())

    def _idle(self, now: float) -> bool:
        """Whether a sync is done. Not while facts wait in the queue: a turn that ran out of
        its budget leaves them there, and one may be a rescan that finds more work."""
        if not self._facts.empty():
            return False
        if self.workers.in_flight or self._take_ins_queued or self._settler or self._departing(now):
            return False
        due = self.journal.next_due_time()
        if due is not None and due <= now:
            return False
        return self.batcher is None or self._drained(self.batcher)

    def _drained(self, batcher: BaiduBatcher) -> bool:
        """Whether everything due for Baidu has been sent (the end of `sync`; its error is raised
        here). Sent from a thread of its own, which wakes the loop when done: so a stop is heard
        meanwhile, and can leave the call in flight behind as it does the batcher's. Items
        queued after a drain began (the loop goes on meanwhile) get a drain of their own."""
        last = self._drain
        stale = batcher.news != self._drain_news and self._drain_error is None
        if last is not None and stale and not last.is_alive():
            self._drain = None
        if self._drain is None:
            self._drain_news = batcher.news

            def drain() -> None:
                try:
                    batcher.drain()
                except Exception as exc:
                    self._drain_error = exc
                self._facts.put(_Control("wake"))

            self._drain = threading.Thread(target=drain, name="baidu-drain", daemon=True)
            self._drain.start()
            return False  # not even if it is over already: what it set off waits for the loop
        if self._drain.is_alive():
            return False
        if self._drain_error is not None:
            raise self._drain_error
        return True

    # -- reload and shutdown -----------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        path = self.settings.config_path
        try:
            if path is None:
                raise ConfigError(["no config file to reload from"])
            settings = load_settings(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected, the old configuration keeps running: %s", problem)
            self.notifier.ready(self._status_line())
            return
        add_secrets(settings.secrets())
        fixed = [
            key
            for key in ("state_dir", "concurrency", "metrics")
            if getattr(settings, key) != getattr(self.settings, key)
        ]
        if fixed:
            log.warning(
                "reload: %s changed, which takes effect only at a restart (systemctl restart watchd); "
                "everything else in the new configuration is in use now",
                ", ".join(fixed),
            )
        self._let_batcher_go()
        self.pipeline.superseded = True  # what it still has in hand is the new one's to retry
        self._build(settings)
        self.pipeline.rerender_queued_pushes()  # a new title or `baidu: false` reaches them too
        self._lift_pauses_a_new_configuration_may_fix()  # judged by the new limits (daily_quota)
        self.journal.rejudge_held_deletes()
        _warn_of_dead_keys(settings)
        self._start_batcher()
        self.upkeep.restart()
        self.upkeep.rescan_all()
        log.info("configuration reloaded from %s", path)
        self.notifier.ready(self._status_line())

    def _shutdown(self) -> int:
        self._wind_down()
        self._close()
        return 0

    def _wind_down(self) -> None:
        """Take no more work; let uploads in flight finish, all within `stop_timeout` from here
        (systemd's TimeoutStopSec comes after it). A Baidu call in flight after a stop request
        gets BAIDU_STOP_GRACE at most; at the natural end of a `sync`, what is left of the time."""
        deadline = time.monotonic() + self.stop_timeout
        asked = self._stopping
        self._stopping = True
        if asked:
            log.info(
                "stopping: the %d files in the upload workers' hands get up to %.0f s to finish; "
                "everything else stays queued for the next start",
                len(self.workers.in_flight),
                self.stop_timeout,
            )
        self.notifier.stopping()
        self.upkeep.stop()
        if self.batcher is not None:
            self.batcher.stop()
        while (left := deadline - time.monotonic()) > 0 and self.workers.in_flight:
            try:
                fact = self._facts.get(timeout=min(0.1, left))
            except queue.Empty:
                continue
            self._left_by_stop(fact)
        with contextlib.suppress(queue.Empty):
            while True:
                self._left_by_stop(self._facts.get_nowait())
        if self.workers.in_flight:
            log.warning(
                "%d uploads still in flight at shutdown; they resume at the next start",
                len(self.workers.in_flight),
            )
        self.workers.stop()
        baidu = [thread for thread in (self._batcher_thread, self._drain) if thread is not None]
        left = max(0.0, deadline - time.monotonic())
        until = time.monotonic() + (min(BAIDU_STOP_GRACE, left) if asked else left)
        for thread in baidu:
            thread.join(timeout=max(0.0, until - time.monotonic()))
        baidu_left = any(thread.is_alive() for thread in baidu)
        if baidu_left:
            log.info("stopping: a Baidu call in flight is left behind; its items go at the next start")
        self._left_behind = baidu_left or bool(self.workers.in_flight)
        self._batcher_thread = None

    def _left_by_stop(self, fact: Fact | Done | _TakeIn | _Control) -> None:
        """A fact met while stopping: a worker's report is recorded; files found and not taken
        in yet are counted (a reconciliation finds them again); the rest can wait."""
        if isinstance(fact, Done):
            with contextlib.suppress(sqlite3.Error):
                self._finished(fact.file_id, fact.outcome, fact.path, fact.error)
        elif isinstance(fact, _TakeIn):
            self._take_ins_queued -= 1
            self._not_taken_in += len(fact.paths)

    def _close(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
        # Calls left behind end with the process instead: closed under them, they would record
        # a failure and a backoff, where their rows, still "uploading"/"sending", go at once.
        if not self._left_behind:
            self.http.close()
        self.journal.close()
        self.instance.release()

    def _status_line(self) -> str:
        """The one-line STATUS= for systemd: queue depths, uploads today, what is paused and
        why, the last error."""
        counts = self.journal.counts()
        queued = counts[j.PENDING] + counts[j.UPLOADING] + counts[j.UPLOADED]
        today = sum(gate.used_today() for gate in self.pipeline.quotas.values())
        line = f"{queued} queued, {today} uploaded today, {counts[j.FAILED]} failed"
        if self.batcher is not None:
            line += f", {self.journal.outbox_depth()} for Baidu"
        self._pauses_shown = self._pauses()
        if self._pauses_shown:
            line += "; paused: " + ", ".join(f"{name} ({kind})" for name, kind in self._pauses_shown)
        return f"{line}; last error: {self.last_error}" if self.last_error else line

    def _pauses(self) -> tuple[tuple[str, str], ...]:
        """The services paused now, with why (quota, configuration, outage)."""
        now = self.clock()
        return tuple((p.name, p.kind) for p in self.journal.pauses() if p.until is None or p.until > now)


def _warn_of_dead_keys(settings: Settings) -> None:
    """Say what in the configuration does nothing (`watchd check` fails on it), once per start
    or reload: `baidu: true` without a `baidu:` section would otherwise go unnoticed."""
    for problem in baidu_without_section(settings):
        log.warning("%s", problem)


def _longest_timeout(settings: Settings) -> float:
    timeouts = [host.timeout for host in settings.hosts.values()]
    if settings.baidu is not None:
        timeouts.append(settings.baidu.timeout)
    return max(timeouts)
