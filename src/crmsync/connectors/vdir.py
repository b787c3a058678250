"""``vdir:PATH``: a local folder, one ``.ics``/``.vcf`` file per item.

The layout khal, todoman and vdirsyncer use: PATH holds one subfolder per object
(``calendar/``, ``contacts/``, ``tasks/``), each file is one item, its name is the ID and
a hash of its bytes is the VERSION.

Change detection is cheap: the CURSOR remembers each file's (mtime, size, inode) and hash;
a listing stats every file and reads only those whose stat changed. Writes are atomic
(a temporary file in the same folder, then rename), so a reader never sees half an item
and a killed run leaves either the old or the new file. Files are not fsync'ed: a killed
process loses nothing the kernel already has; surviving power loss is the disk's job.

Paths are plain strings here: pathlib costs more than the I/O in a 10,000-item listing.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from crmsync import formats
from crmsync.connectors.base import (
    Capabilities,
    Changes,
    Checkpoint,
    Connector,
    Create,
    Delete,
    Item,
    ReadProgress,
    Result,
    Side,
    Update,
    Window,
    Write,
)
from crmsync.errors import ConfigError, CrmsyncError, unexpected
from crmsync.formats import contentlines
from crmsync.model import OBJECT_KINDS, RECORD_TYPES, ObjectKind

FORMAT: dict[ObjectKind, str] = {
    "calendar": formats.ICALENDAR,
    "tasks": formats.ICALENDAR,
    "contacts": formats.VCARD,
}
EXTENSION: dict[ObjectKind, str] = {"calendar": ".ics", "tasks": ".ics", "contacts": ".vcf"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.@+=-]{1,160}")

# name -> [mtime_ns, size, inode, hash]
FileState = list
_CURSOR_VERSION = 1
# Files read per progress report.
PROGRESS_EVERY = 100
_tmp_names = itertools.count()


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _moment(mtime_ns: int) -> str:
    return _second(mtime_ns // 1_000_000_000)


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Files written together share their second: formatting each one again is wasted work.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_name(uid: str, ext: str) -> str:
    """The file name for a new item: its UID when that is a safe name, else a hash of it."""
    if _SAFE_NAME.fullmatch(uid) and not uid.startswith("."):
        return uid + ext
    return hashlib.sha1(uid.encode()).hexdigest() + ext


class VdirConnector(Connector):
    def __init__(self, root: str | os.PathLike[str], side: Side) -> None:
        self.root = os.path.expanduser(os.fspath(root))
        self.side = side
        self.capabilities = Capabilities(
            fields={k: frozenset(RECORD_TYPES[k]().fields()) for k in OBJECT_KINDS},
            batch_size=500,
            keeps_uid=True,
        )
        # The files as listed and then written by this run, per object.
        self._files: dict[ObjectKind, dict[str, FileState]] = {}
        self._written_kinds: set[ObjectKind] = set()

    def folder(self, kind: ObjectKind) -> str:
        return os.path.join(self.root, kind)

    def _ensure_folder(self, kind: ObjectKind) -> str:
        if not os.path.isdir(self.root):
            raise ConfigError(f"vdir folder {self.root} does not exist")
        folder = self.folder(kind)
        os.makedirs(folder, exist_ok=True)
        return folder

    # --- reading -------------------------------------------------------------------------

    def list_changes(self, kind: ObjectKind, cursor: str | None, *,
                     window: Window | None = None,
                     checkpoint: Checkpoint | None = None,
                     progress: ReadProgress | None = None) -> Changes:
        # A folder lists in one step, and reading it whole is cheaper than filtering it.
        folder = self._ensure_folder(kind)
        old: dict[str, FileState] = _decode_cursor(cursor)
        ext = EXTENSION[kind]
        files: dict[str, FileState] = {}
        changes = Changes(complete=cursor is None)
        with os.scandir(folder) as scan:
            entries = list(scan)
        for n, entry in enumerate(entries, 1):
            if progress is not None and (n % PROGRESS_EVERY == 0 or n == len(entries)):
                progress(n, len(entries))
            name = entry.name
            if not name.endswith(ext) or name.startswith("."):
                continue
            if not _utf8(name):
                # No id can name it (ids are text everywhere): reported at every listing
                # under a readable stand-in until it is renamed.
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8",
                                                                        "backslashreplace")
                changes.upserts.append((shown, "unnamed", Item(
                    shown, "unnamed", "", FORMAT[kind], kind,
                    error=f"the file name '{shown}' is not valid UTF-8: rename it")))
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed while we listed: it is a deletion if it was known
            prev = old.get(name)
            if prev is not None and prev[0] == st.st_mtime_ns and prev[1] == st.st_size \
                    and prev[2] == st.st_ino:
                files[name] = prev
                continue
            item = self._read(kind, folder, name)
            if item is None:
                continue
            files[name] = [st.st_mtime_ns, st.st_size, st.st_ino, item.version]
            if prev is None or prev[3] != item.version:
                changes.upserts.append((name, item.version, item))
        changes.deleted = sorted(old.keys() - files.keys())
        changes.upserts.sort(key=lambda u: u[0])
        self._files[kind] = files
        # Re-encoding 10,000 entries costs more than the listing: skip it when unchanged.
        unchanged = len(files) == len(old) and all(files[n] is old.get(n) for n in files)
        changes.cursor = cursor if unchanged else _encode_cursor(files)
        return changes

    def _read(self, kind: ObjectKind, folder: str, name: str) -> Item | None:
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                data = fh.read()
                mtime = os.fstat(fh.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None
        except OSError as exc:
            # A folder named like an item, a file we may not read: that item's failure.
            return Item(name, f"unreadable-{exc.errno}", "", FORMAT[kind], kind,
                        error=f"{name} cannot be read: {exc.strerror or exc}")
        return _item(kind, name, data, mtime)

    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        folder = self.folder(kind)
        out = {}
        for item_id in ids:
            item = self._read(kind, folder, item_id)
            if item is not None:
                out[item_id] = item
        return out

    def cursor(self, kind: ObjectKind, listed: str | None) -> str | None:
        if kind not in self._written_kinds:
            return listed
        return _encode_cursor(self._files[kind])

    # --- writing -------------------------------------------------------------------------

    def apply(self, kind: ObjectKind, writes: Sequence[Write]) -> list[Result]:
        folder = self._ensure_folder(kind)
        files = self._files.setdefault(kind, {})
        self._written_kinds.add(kind)
        results = []
        for write in writes:
            try:
                if isinstance(write, Create):
                    result = self._create(kind, folder, write)
                elif isinstance(write, Update):
                    result = self._update(kind, folder, write)
                else:
                    result = self._delete(folder, write)
            except (CrmsyncError, OSError) as exc:
                result = Result("failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - a rendering bug fails this item only
                result = Result("failed", error=unexpected(exc))
            if result.status == "ok" and isinstance(write, Delete):
                files.pop(write.id, None)
            results.append(result)
        return results

    def _create(self, kind: ObjectKind, folder: str, write: Create) -> Result:
        source = write.source
        if write.record is None and source.fmt == FORMAT[kind] and source.error is None:
            # Same format on both sides: copy the item verbatim, nothing is lost.
            raw = source.raw
            if write.crm_id:
                raw = formats.render(FORMAT[kind], kind, write.content(), raw)
            uid = source.uid or ""
        else:
            record = write.content()
            # Over the source's own text when it has the same format (e.g. a UID given to
            # an item without one): what the model does not know is kept. A copy with an
            # identity of its own (no UID yet) is written afresh.
            same = source.fmt == FORMAT[kind] and source.error is None and record.uid
            raw = formats.render(FORMAT[kind], kind, record, source.raw if same else None)
            uid = record.uid
        ext = EXTENSION[kind]
        data = raw.encode("utf-8")
        name = file_name(uid, ext) if uid else _hash(data) + ext
        try:
            return Result("ok", self._write(kind, folder, name, data, exclusive=True))
        except FileExistsError:
            pass
        existing = self._read(kind, folder, name)
        if existing is not None and existing.uid == uid:
            return Result("exists", existing)
        name = f"{name[:-len(ext)]}-{_hash(data)[:8]}{ext}"
        return Result("ok", self._write(kind, folder, name, data, exclusive=True))

    def _update(self, kind: ObjectKind, folder: str, write: Update) -> Result:
        current = self._read(kind, folder, write.id)
        if current is None:
            return Result("changed", error="the item was deleted meanwhile")
        if current.version != write.version:
            return Result("changed", current)
        # Same version, same bytes: the planner's parse of the item is as good as ours.
        planned = write.planned if write.planned is not None else current
        record = write.over(planned.record())
        data = formats.render(FORMAT[kind], kind, record, current.raw).encode("utf-8")
        return Result("ok", self._write(kind, folder, write.id, data))

    def _delete(self, folder: str, write: Delete) -> Result:
        path = os.path.join(folder, write.id)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return Result("ok")  # already gone: deleting again is a no-op
        if _hash(data) != write.version:
            return Result("changed", error="the item changed since it was planned")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return Result("ok")

    def _write(self, kind: ObjectKind, folder: str, name: str, data: bytes,
               exclusive: bool = False) -> Item:
        """Write atomically; ``exclusive`` never replaces an existing file."""
        path = os.path.join(folder, name)
        # A dot-file in the same folder (listings skip dot-files), named by pid and
        # counter; O_EXCL makes a stale one from a killed run an error, not a shared file.
        tmp = os.path.join(folder, f".crmsync-{os.getpid()}-{next(_tmp_names)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                # The inode survives the rename: its stat is the final file's.
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if exclusive:
                os.link(tmp, path)  # fails if the name exists
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        item = _item(kind, name, data, st.st_mtime_ns)
        # Our own write is not a change to report next time.
        self._files[kind][name] = [st.st_mtime_ns, st.st_size, st.st_ino, item.version]
        return item


def _item(kind: ObjectKind, name: str, data: bytes, mtime_ns: int) -> Item:
    version = _hash(data)
    try:
        raw = contentlines.decode(data)
    except UnicodeDecodeError as exc:
        return Item(name, version, "", FORMAT[kind], kind, modified=_moment(mtime_ns),
                    error=f"{name} is not valid UTF-8 (byte {exc.start})")
    return Item(name, version, raw, FORMAT[kind], kind, modified=_moment(mtime_ns))


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encode_cursor(files: dict[str, FileState]) -> str:
    return json.dumps({"v": _CURSOR_VERSION, "files": files}, separators=(",", ":"))


def _decode_cursor(cursor: str | None) -> dict[str, FileState]:
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}  # unreadable cursor: a full listing is always safe
    if data.get("v") != _CURSOR_VERSION:
        return {}
    return data["files"]
