"""Filesystem events → plain facts about files, for the engine.

watchdog's events are hints, not truth: the engine checks every fact against the disk and
the journal before acting. This module only translates:

- close-after-write, or a file moved in from outside → `Finished` (act now);
- created / modified without a close (polling observers, hard links) → `Changed` (the
  engine waits until size and mtime stay stable for the settle interval);
- a rename inside the watched tree → `Moved`; a file deleted or moved out → `Gone`;
- a directory moved in → `DirArrived`; a directory deleted or moved out → `DirGone`;
- a chmod, chown or touch (IN_ATTRIB) → `Changed` for a file (one that could not be read may
  be readable now), `DirChanged` for a directory (one that could not be watched may be now).

A watched folder itself deleted gives a `DirGone` of it; one moved away gives no event at all
(watchdog drops IN_MOVE_SELF, and its watches follow the directory to its new name): the
upkeep notices either by the folder's device and inode, and watches what is there now.

Folders on network or FUSE filesystems (where inotify sees no remote changes) are polled,
and so is any folder for which the inotify watch limit is exhausted.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyConstants, Mask
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
from watchdog.observers.polling import PollingObserverVFS

log = logging.getLogger(__name__)

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "davfs", "afs", "lustre", "gpfs"}
)


# What inotify is asked for. Opens, reads and every single write are left out: a finished
# file is known by its close-after-write, and reading a directory (as reconciliation does)
# must not flood the kernel's event queue. Attribute changes are in: a chmod that makes a
# file or directory readable writes nothing else.
INOTIFY_EVENTS: list[type[FileSystemEvent]] = [
    FileAttribEvent,
    DirAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]
OVERFLOW_RESCAN_INTERVAL = 30.0

# watchdog holds the first half of every rename for `delay` seconds to pair it with the
# second, and events behind it wait too; watchd renames a temp file over every sidecar it
# writes, so the default 0.5 s would stall other files' events. Both halves of a rename
# arrive together from the kernel, and a move split anyway is paired by the engine (same
# size and content), so a short hold loses nothing.
InotifyMoveEventGrouper.delay = 0.05


@dataclass(frozen=True)
class Finished:
    """A file is fully written (closed after writing, or moved in whole)."""

    path: str


@dataclass(frozen=True)
class Arrived:
    """A file was moved in whole from outside this watched folder: complete, but possibly the
    second half of a move from another watched folder, whose first half (a `Gone`) the
    watchdog of that folder reports a moment later."""

    path: str


@dataclass(frozen=True)
class Changed:
    """A file was created or written; it is finished once it stops changing."""

    path: str


@dataclass(frozen=True)
class Moved:
    """A file was renamed or moved from `src` to `dest`, both inside a watched folder."""

    src: str
    dest: str


@dataclass(frozen=True)
class Gone:
    """A file was deleted, or moved out of every watched folder."""

    path: str


@dataclass(frozen=True)
class DirArrived:
    """A directory was moved in from outside this watched folder: its files are to be taken
    in, but it may be the second half of a move from another watched folder (see `Arrived`),
    whose files are the same ones moved, not new ones."""

    path: str


@dataclass(frozen=True)
class DirGone:
    """A directory was deleted or moved out: every file the journal knows below it is gone."""

    path: str


@dataclass(frozen=True)
class Rescan:
    """Events may have been missed below `path` (a directory moved in, a queue overflow)."""

    path: str


@dataclass(frozen=True)
class DirChanged:
    """A directory's permissions, owner or times changed: one that could not be read may be now."""

    path: str


@dataclass(frozen=True)
class FolderBack:
    """A watched folder is there again, or is another directory than the one watched (swapped,
    or deleted and re-created): it is watched anew, and must be reconciled (from `FolderUpkeep`)."""

    path: str


Fact = Finished | Arrived | Changed | Moved | Gone | DirArrived | DirGone | DirChanged | Rescan | FolderBack


@dataclass(frozen=True)
class WatchSpec:
    """One watched folder: `poll` None means "decide from the filesystem type"."""

    root: Path
    recursive: bool
    poll: bool | None = None
    poll_interval: float | None = None


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The filesystem type of the mount holding `path` ("" when it cannot be told)."""
    best, fstype = "", ""
    target = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.split()
                try:
                    mount_point = fields[4].replace("\\040", " ")
                    kind = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, kind
    except OSError:
        return ""
    return fstype


def needs_polling(path: Path) -> bool:
    """True for network and FUSE filesystems, where inotify does not see remote changes."""
    fstype = filesystem_type(path)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse")


def default_poll_interval(root: Path, cap: int = 10_000) -> float:
    """Poll interval scaled to the tree size: a full stat walk should cost a small share of time."""
    count = 0
    for _dirpath, _dirs, files in os.walk(root):
        count += len(files)
        if count >= cap:
            break
    return min(60.0, max(2.0, count / 500))


class _Translator(FileSystemEventHandler):
    """Turns watchdog events into facts and hands them to `sink` (called on watchdog's thread)."""

    def __init__(self, sink: Callable[[Fact], None]) -> None:
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        fact = translate(event)
        if fact is not None:
            self._sink(fact)


def translate(event: FileSystemEvent) -> Fact | None:
    """The fact an event stands for, or None for events that say nothing new."""
    src = os.fsdecode(event.src_path)
    dest = os.fsdecode(event.dest_path)
    if isinstance(event, FileClosedEvent):
        return Finished(src)
    if isinstance(event, FileCreatedEvent | FileModifiedEvent | FileAttribEvent):
        return Changed(src)
    if isinstance(event, FileDeletedEvent):
        return Gone(src)
    if isinstance(event, FileMovedEvent):
        if not src:
            return Arrived(dest)
        if not dest:
            return Gone(src)
        return Moved(src, dest)
    if isinstance(event, DirMovedEvent):
        if not src:
            return DirArrived(dest)
        if not dest:
            return DirGone(src)
        return None  # watchdog reports a FileMovedEvent for every file inside
    if isinstance(event, DirDeletedEvent):
        return DirGone(src)
    if isinstance(event, DirAttribEvent):
        return DirChanged(src)
    return None


class _AttribEmitter(InotifyFullEmitter):
    """watchdog asks inotify for attribute changes only together with every single write
    (IN_MODIFY); this asks for them alone."""

    def get_event_mask_from_filter(self) -> Mask:
        return Mask(super().get_event_mask_from_filter() | InotifyConstants.IN_ATTRIB)


class _InotifyObserver(InotifyObserver):
    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        self._emitter_class = _AttribEmitter


class _OverflowListener(logging.Handler):
    """Hears watchdog report a kernel inotify queue overflow and asks for rescans.

    watchdog rebuilds its watches after an overflow but tells its users only through this
    log line (from the thread that reads the inotify descriptor); every folder watched by
    inotify may have lost events, so each gets a `Rescan` — at most once per
    `OVERFLOW_RESCAN_INTERVAL`, so that a storm of overflows cannot become a storm of scans.
    """

    LOGGER = "watchdog.observers.inotify_c"
    MESSAGE = "Inotify queue overflowed"

    def __init__(self, roots: Callable[[], list[Path]], sink: Callable[[Fact], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._roots = roots
        self._sink = sink
        self._last = -OVERFLOW_RESCAN_INTERVAL

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith(self.MESSAGE):
            return
        now = time.monotonic()
        if now - self._last < OVERFLOW_RESCAN_INTERVAL:
            return
        self._last = now
        for root in self._roots():
            self._sink(Rescan(str(root)))


class FolderWatcher:
    """Watches every folder with the right observer and reports facts to `sink`."""

    def __init__(self, specs: list[WatchSpec], sink: Callable[[Fact], None]) -> None:
        self._specs = specs
        self._handler = _Translator(sink)
        self.inotified: list[Path] = []
        self._overflow = _OverflowListener(lambda: list(self.inotified), sink)
        self._inotify: BaseObserver = _InotifyObserver()
        self._polling: dict[float, BaseObserver] = {}
        self.polled: list[Path] = []
        self.unavailable: list[Path] = []

    def start(self) -> None:
        overflows = logging.getLogger(_OverflowListener.LOGGER)
        # The listener hears only records that are created: with `--log-level error` the root
        # logger's level would drop watchdog's warning before any handler sees it (whether it
        # is shown is the stderr handler's business, see `watchd.logs`).
        if overflows.level == logging.NOTSET or overflows.level > logging.WARNING:
            overflows.setLevel(logging.WARNING)
        overflows.addHandler(self._overflow)
        # Observers run before folders are scheduled, so that a folder whose watches cannot
        # be added fails on its own (in schedule) instead of failing the observer's start.
        self._inotify.start()
        for spec in self._specs:
            self._schedule(spec)

    def stop(self) -> None:
        logging.getLogger(_OverflowListener.LOGGER).removeHandler(self._overflow)
        for observer in (self._inotify, *self._polling.values()):
            observer.stop()
        for observer in (self._inotify, *self._polling.values()):
            if observer.is_alive():
                observer.join(timeout=5)

    def _schedule(self, spec: WatchSpec) -> None:
        if not spec.root.is_dir():
            self._unavailable(spec.root)
            return
        poll = spec.poll if spec.poll is not None else needs_polling(spec.root)
        if not poll:
            try:
                self._inotify.schedule(
                    self._handler, str(spec.root), recursive=spec.recursive, event_filter=INOTIFY_EVENTS
                )
                self.inotified.append(spec.root)
                return
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):  # gone or unreadable meanwhile
                    self._unavailable(spec.root)
                    return
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.error(
                    "inotify watch limit reached while watching %s; polling it instead. Raise the limit: "
                    "sudo sysctl fs.inotify.max_user_watches=524288 (and put "
                    "'fs.inotify.max_user_watches=524288' in /etc/sysctl.d/90-watchd.conf)",
                    spec.root,
                )
        interval = spec.poll_interval or default_poll_interval(spec.root)
        observer = self._polling.get(interval)
        if observer is None:
            # lstat, not stat: a directory link is not walked (a loop, or a way out of the folder)
            observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=interval)
            self._polling[interval] = observer
            observer.start()
        observer.schedule(self._handler, str(spec.root), recursive=spec.recursive)
        self.polled.append(spec.root)
        log.info(
            "polling %s every %.0f s (network/FUSE filesystem or inotify unavailable)", spec.root, interval
        )

    def _unavailable(self, root: Path) -> None:
        """Said once to the user by the folder availability check (`FolderAvailability`),
        which also judges what its absence means; here it is only noted."""
        log.debug("not watching %s: missing, not a directory or unreadable", root)
        self.unavailable.append(root)
