"""Link sidecar files: where they go, what they hold, and how they are written.

A sidecar sits next to its original (`cat.png` → `cat.png.link.json` by default) and holds
either a JSON record of the upload or a ready-to-paste snippet. It is always replaced
atomically, so a reader sees the old or the new content, never a torn file. Originals are
never touched here.
"""

from __future__ import annotations

import contextlib
import errno
import html
import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from watchd.intree import read_regular, real_directory
from watchd.templates import render

TEMP_MARKER = ".watchd-tmp-"
NAME_MAX = 255  # bytes in one file name, on Linux file systems
"""Part of the name of every temp file `write_atomic` creates: the watcher ignores them."""

SIDECAR_MODE = 0o644
SIDECAR_MAX = 65536  # bytes: far more than any sidecar watchd writes; a bigger file is not one
_temp_numbers = itertools.count()  # next() on it is atomic under the GIL


@dataclass(frozen=True)
class SidecarRecord:
    """Everything a sidecar can show about one uploaded original.

    `uploaded_at` and `pushed_at` are ISO 8601 UTC; `baidu_id`/`pushed_at` are set only
    once the image was submitted to Baidu.
    """

    original: Path
    link: str
    short_link: str
    remote_id: str
    host: str
    sha256: str
    size: int
    resolution: str
    uploaded_at: str
    baidu_id: str | None = None
    pushed_at: str | None = None


def sidecar_path(original: Path, name_template: str, context: Mapping[str, str]) -> Path:
    """Given an original and the sidecar name template, return the sidecar's path.

    The sidecar always lives in the original's directory. Raise ValueError if the template
    is invalid or renders to an empty name, a path (a separator, "." or ".."), or the
    original's own name — a sidecar must never replace the image it describes.
    """
    name = render(name_template, context)
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ValueError(
            f"sidecar name template {name_template!r} must produce a plain file name, got {name!r}"
        )
    if name == original.name:
        raise ValueError(f"sidecar name template {name_template!r} produces the original's own name")
    return original.with_name(name)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&!])")
# Characters that may stay as they are in a URL placed in markdown, bbcode or html: the
# reserved set minus the brackets, parentheses and quotes that end a link in those formats.
_URL_SAFE = ":/?#@!$&'*+,;=%~"


def _url(link: str) -> str:
    return quote(link, safe=_URL_SAFE)


def _json(record: SidecarRecord) -> str:
    data: dict[str, object] = {
        "name": record.original.name,
        "link": record.link,
        "short_link": record.short_link,
        "id": record.remote_id,
        "host": record.host,
        "sha256": record.sha256,
        "size": record.size,
        "resolution": record.resolution,
        "uploaded_at": record.uploaded_at,
    }
    if record.baidu_id is not None and record.pushed_at is not None:
        data["baidu"] = {"id": record.baidu_id, "pushed_at": record.pushed_at}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _txt(record: SidecarRecord) -> str:
    return record.link + "\n"


def _md(record: SidecarRecord) -> str:
    alt = _MD_SPECIAL.sub(r"\\\1", record.original.stem)
    return f"![{alt}]({_url(record.link)})\n"


def _bbcode(record: SidecarRecord) -> str:
    return f"[url={_url(record.short_link)}][img]{_url(record.link)}[/img][/url]\n"


def _html(record: SidecarRecord) -> str:
    href = html.escape(_url(record.short_link))
    src = html.escape(_url(record.link))
    return f'<a href="{href}"><img src="{src}" alt="{html.escape(record.original.stem)}"></a>\n'


_RENDERERS: dict[str, Callable[[SidecarRecord], str]] = {
    "json": _json,
    "txt": _txt,
    "md": _md,
    "bbcode": _bbcode,
    "html": _html,
}
FORMATS: tuple[str, ...] = tuple(_RENDERERS)
SHOWS_BAIDU = frozenset({"json"})  # the formats that show `baidu: {id, pushed_at}`


def render_sidecar(fmt: str, record: SidecarRecord) -> str:
    """Return the sidecar text of `record` in format `fmt` (one of `FORMATS`).

    json is a pretty-printed UTF-8 record; txt, md, bbcode and html are ready-to-paste
    snippets with the URLs and the alt text escaped for their format. Raise ValueError
    for an unknown format.
    """
    try:
        renderer = _RENDERERS[fmt]
    except KeyError:
        raise ValueError(f"unknown sidecar format {fmt!r}; use one of {', '.join(FORMATS)}") from None
    return renderer(record)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8, mode 0644) so readers never see a partial file.

    The text goes to `.{name}.watchd-tmp-{pid}-{n}-{random}` in the same directory, created
    there (see `_create_temp`) through a descriptor of the directory (`real_directory`: not
    through a symlink that replaced it), is written in one call and fsynced, then renamed
    over `path`. The directory itself is not fsynced: if a
    power cut loses the rename, reconciliation finds the sidecar missing and writes it
    again. On any failure the temp file is removed and the error propagates, leaving an
    existing sidecar untouched; a temp file left by a killed process is removed by
    `remove_stale_temp` during reconciliation.
    """
    with real_directory(path) as directory:
        fd, tmp = _create_temp(path.name, directory)
        try:
            try:
                os.fchmod(fd, SIDECAR_MODE)  # whatever the umask
                data = text.encode("utf-8")
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=directory)
            raise


def _create_temp(name: str, directory: int) -> tuple[int, str]:
    """A new temp file for the sidecar `name` in `directory` (a descriptor), opened for
    writing, and its name. Created, never opened if it exists: a file planted under the name
    (a FIFO that would block the write, a hard link to another file that it would overwrite)
    is passed over for the next name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _attempt in range(100):
        tmp = _temp_name(name, f"{TEMP_MARKER}{os.getpid()}-{next(_temp_numbers)}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, SIDECAR_MODE, dir_fd=directory), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name next to it", name)


def _temp_name(name: str, suffix: str) -> str:
    """`.{name}{suffix}`, with `name` cut short enough (on a character boundary) that the temp
    name fits where the sidecar's own name fits: in NAME_MAX (255) bytes."""
    room = NAME_MAX - 1 - len(suffix.encode())
    if len(os.fsencode(name)) <= room:
        return f".{name}{suffix}"
    kept = 0
    for end, character in enumerate(name):
        kept += len(os.fsencode(character))
        if kept > room:
            name = name[:end]
            break
    return f".{name}{suffix}"


def remove_stale_temp(path: str) -> bool:
    """Remove a `write_atomic` temp file whose writer process is gone; True if removed."""
    try:
        pid = int(os.path.basename(path).split(TEMP_MARKER, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid() or _process_alive(pid):
        return False
    with contextlib.suppress(FileNotFoundError), real_directory(path) as directory:
        os.unlink(os.path.basename(path), dir_fd=directory)
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def written_for(
    sidecar: Path, fmt: str, link: str | None, remote_id: str | None, sha256: str | None, name: str
) -> bool:
    """Whether `sidecar` is provably one watchd wrote in format `fmt` for the upload of `link`
    (and `remote_id`), or, with no `link` known (killed before recording it), for the content
    `sha256` of the original called `name`: a regular file (a link is never followed) holding,
    in json, that record; in any other format, `link` itself."""
    try:
        data = read_regular(sidecar, SIDECAR_MAX)
    except OSError:  # gone, not a plain file in the folder, or too large to be a sidecar
        return False
    if fmt != "json":
        return link is not None and link in data.decode("utf-8", errors="replace")
    try:
        record = json.loads(data)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    if link is not None:
        return record.get("link") == link and record.get("id") == (remote_id or "")
    return sha256 is not None and record.get("sha256") == sha256 and record.get("name") == name


def remove_sidecar(path: Path) -> bool:
    """Delete a sidecar; return False if it was already gone, or is no longer in the watched
    tree (a directory on its way is now a symlink: what it leads to is not watchd's). Other OS
    errors propagate."""
    try:
        with real_directory(path) as directory:
            os.unlink(path.name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True
