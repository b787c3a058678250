"""``vdir:PATH``: a local folder, one ``.ics``/``.vcf`` file per item.

The layout khal, todoman and vdirsyncer use: PATH holds one subfolder per object
(``calendar/``, ``contacts/``, ``tasks/``), each file is one item, its name is the ID and
a hash of its bytes is the VERSION.

Change detection is cheap: the CURSOR remembers each file's (mtime, size, inode) and hash;
a listing stats every file and reads only those whose stat changed. Writes are atomic
(a temporary file in the same folder, then rename), so a reader never sees half an item
and a killed run leaves either the old or the new file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from crmsync import formats
from crmsync.connectors.base import (
    Capabilities,
    Changes,
    Connector,
    Create,
    Delete,
    Item,
    Result,
    Side,
    Update,
    Write,
)
from crmsync.errors import ConfigError, CrmsyncError
from crmsync.merge import apply_changes
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


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _mtime_moment(mtime_ns: int) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_name(uid: str, ext: str) -> str:
    """The file name for a new item: its UID when that is a safe name, else a hash of it."""
    if _SAFE_NAME.fullmatch(uid) and not uid.startswith("."):
        return uid + ext
    return hashlib.sha1(uid.encode()).hexdigest() + ext


class VdirConnector(Connector):
    def __init__(self, root: Path | str, side: Side) -> None:
        self.root = Path(root).expanduser()
        self.side = side
        self.capabilities = Capabilities(
            fields={k: frozenset(RECORD_TYPES[k]().fields()) for k in OBJECT_KINDS},
            batch_size=500,
            keeps_uid=True,
        )
        # The files as listed and then written by this run, per object.
        self._files: dict[ObjectKind, dict[str, FileState]] = {}
        self._written_kinds: set[ObjectKind] = set()

    # --- reading -------------------------------------------------------------------------

    def folder(self, kind: ObjectKind) -> Path:
        return self.root / kind

    def _ensure_folder(self, kind: ObjectKind) -> Path:
        if not self.root.is_dir():
            raise ConfigError(f"vdir folder {self.root} does not exist")
        folder = self.folder(kind)
        folder.mkdir(exist_ok=True)
        return folder

    def list_changes(self, kind: ObjectKind, cursor: str | None) -> Changes:
        folder = self._ensure_folder(kind)
        old: dict[str, FileState] = _decode_cursor(cursor)
        ext = EXTENSION[kind]
        files: dict[str, FileState] = {}
        changes = Changes(complete=cursor is None)
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(ext) or name.startswith("."):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed while we listed: it is a deletion if it was known
                prev = old.get(name)
                sig = [st.st_mtime_ns, st.st_size, st.st_ino]
                if prev is not None and prev[:3] == sig:
                    files[name] = prev
                    continue
                item = self._read(kind, folder / name, name, st.st_mtime_ns)
                if item is None:
                    continue
                files[name] = sig + [item.version]
                if prev is None or prev[3] != item.version:
                    changes.upserts.append((name, item.version, item))
        changes.deleted = sorted(old.keys() - files.keys())
        changes.upserts.sort(key=lambda u: u[0])
        self._files[kind] = files
        # Re-encoding 10,000 entries costs more than the listing: skip it when unchanged.
        unchanged = len(files) == len(old) and all(files[n] is old.get(n) for n in files)
        changes.cursor = cursor if unchanged else _encode_cursor(files)
        return changes

    def _read(self, kind: ObjectKind, path: Path, name: str,
              mtime: int | None = None) -> Item | None:
        try:
            data = path.read_bytes()
            if mtime is None:
                mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        version = _hash(data)
        modified = _mtime_moment(mtime)
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Item(name, version, "", FORMAT[kind], kind, modified=modified,
                        error=f"{path.name} is not valid UTF-8 (byte {exc.start})")
        return Item(name, version, raw, FORMAT[kind], kind, modified=modified)

    def fetch(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, Item]:
        folder = self.folder(kind)
        out = {}
        for item_id in ids:
            item = self._read(kind, folder / item_id, item_id)
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
            if result.status == "ok":
                name = result.item.id if result.item else write.id  # type: ignore[union-attr]
                if result.item is None:
                    files.pop(name, None)
                else:
                    st = (folder / name).stat()
                    files[name] = [st.st_mtime_ns, st.st_size, st.st_ino, result.item.version]
            results.append(result)
        return results

    def _create(self, kind: ObjectKind, folder: Path, write: Create) -> Result:
        source = write.source
        if write.record is None and source.fmt == FORMAT[kind] and source.error is None:
            # Same format on both sides: copy the item verbatim, nothing is lost.
            raw = source.raw
            uid = source.uid or ""
        else:
            record = write.content()
            raw = formats.render(FORMAT[kind], kind, record)
            uid = record.uid
        ext = EXTENSION[kind]
        name = file_name(uid, ext) if uid else _hash(raw.encode()) + ext
        path = folder / name
        if path.exists():
            existing = self._read(kind, path, name)
            if existing is not None and existing.uid == uid:
                return Result("exists", existing)
            name = f"{Path(name).stem}-{_hash(raw.encode())[:8]}{ext}"
            path = folder / name
        data = raw.encode("utf-8")
        _atomic_write(path, data, exclusive=True)
        return Result("ok", self._written(kind, name, data, path))

    def _update(self, kind: ObjectKind, folder: Path, write: Update) -> Result:
        path = folder / write.id
        current = self._read(kind, path, write.id)
        if current is None:
            return Result("changed", error="the item was deleted meanwhile")
        if current.version != write.version:
            return Result("changed", current)
        # Same version, same bytes: the planner's parse of the item is as good as ours.
        planned = write.planned if write.planned is not None else current
        record = apply_changes(planned.record(), write.changes)
        data = formats.render(FORMAT[kind], kind, record, current.raw).encode("utf-8")
        _atomic_write(path, data)
        return Result("ok", self._written(kind, write.id, data, path))

    def _delete(self, folder: Path, write: Delete) -> Result:
        path = folder / write.id
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Result("ok")  # already gone: deleting again is a no-op
        if _hash(data) != write.version:
            return Result("changed", error="the item changed since it was planned")
        path.unlink(missing_ok=True)
        return Result("ok")

    def _written(self, kind: ObjectKind, name: str, data: bytes, path: Path) -> Item:
        return Item(name, _hash(data), data.decode("utf-8"), FORMAT[kind], kind,
                    modified=_mtime_moment(path.stat().st_mtime_ns))


_tmp_names = itertools.count()


def _atomic_write(path: Path, data: bytes, exclusive: bool = False) -> None:
    # A dot-file in the same folder (listings skip dot-files), named by pid and counter;
    # O_EXCL makes a stale one from a killed run an error instead of a shared file.
    tmp = path.parent / f".crmsync-{os.getpid()}-{next(_tmp_names)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if exclusive:
            # link() fails if the name exists: a create never overwrites another item.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


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
