"""Atomic file writes and the small readers/writers the run directory uses (named
``files``, not ``io``, so it never shadows the standard library)."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmcollapse.errors import ConfigError
from lmcollapse.faults import kill_point

#: the process's umask (read once: os.umask can only be read by setting it)
UMASK = os.umask(0o022)
os.umask(UMASK)


#: each folder's record of what was written into it: one JSON line per file written
#: (name, bytes, sha256), the last line of a name wins
MANIFEST = ".checksums.jsonl"


class ArtifactError(ConfigError):
    """A file of the run directory is missing, cut or changed since it was written."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(folder: Path, paths: list[Path], gone: list[str] = ()) -> None:
    """Append the size and checksum of freshly written ``paths`` to ``folder``'s manifest,
    and mark the names in ``gone`` as no longer there."""
    lines = "".join(json.dumps({"name": name, "deleted": True}) + "\n" for name in gone)
    lines += "".join(json.dumps({"name": p.relative_to(folder).as_posix(),
                                 "bytes": p.stat().st_size, "sha256": sha256(p)}) + "\n"
                     for p in paths)
    with open(folder / MANIFEST, "a") as f:
        f.write(lines)


def recorded(folder: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes", "sha256"}}`` of what the folder's manifest records."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            if entry.get("deleted"):
                out.pop(entry["name"], None)
            else:
                out[entry["name"]] = {"bytes": entry["bytes"], "sha256": entry["sha256"],
                                      **entry}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut by a kill: that write was not finished
    return out


def _problem(path: Path, entry: dict[str, Any], full: bool) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"has {size} bytes, {entry['bytes']} were written"
    if full and sha256(path) != entry["sha256"]:
        return "was changed (its sha256 differs from the one recorded when it was written)"
    return None


def verify(path: str | Path, full: bool = True) -> None:
    """Check a file (or every recorded file under a folder) against its record before it is
    used: size, and with ``full`` the sha256. A file nobody recorded passes (written before
    checksums, or outside the harness); a path that does not exist fails. Raises
    :class:`ArtifactError` naming the file."""
    path = Path(path)
    folder, entries = path.parent, recorded(path.parent)
    name = path.name
    if not path.exists():  # recorded or not, a file the run needs is not there
        raise ArtifactError(
            f"{path} is missing: it cannot be used. Restore it, or delete {folder} to redo "
            "the step that wrote it (and what came after)")
    checks = [(path, entries[name])] if name in entries else [
        (folder / n, e) for n, e in entries.items() if n.startswith(name + "/")]
    for file, entry in checks:
        problem = _problem(file, entry, full)
        if problem:
            raise ArtifactError(
                f"{file} {problem}: it cannot be used. Restore it, or delete "
                f"{file.parent if file.parent != folder else folder} to redo the step that "
                "wrote it (and what came after)")


def verify_folder(folder: Path, full: bool = False) -> None:
    """Every file the folder's manifest records (sizes; with ``full`` also checksums)."""
    for name, entry in recorded(folder).items():
        problem = _problem(folder / name, entry, full)
        if problem:
            raise ArtifactError(f"{folder / name} {problem}: a finished step wrote it. "
                                f"Restore it, or delete {folder} to redo that generation "
                                "(and what came after)")


def _atomic(path: Path, write, record: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a finished file follows the umask
    try:
        write(tmp)
        kill_point("atomic_write")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if record:
        _record(path.parent, [path])


def write_text(path: str | Path, text: str, record: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename) and,
    with ``record``, its checksum into the folder's manifest (a run directory's files;
    a report's are not)."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text), record)


def write_bytes(path: str | Path, data: bytes, record: bool = True) -> None:
    """:func:`write_text` for bytes."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data), record)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def write_rows(path: str | Path, rows: list[dict[str, Any]],
               columns: list[str] | None = None) -> None:
    """Write a list of dicts as parquet atomically (``columns`` selects and orders)."""
    columns = columns or (list(rows[0]) if rows else [])
    table = pa.table({c: [r[c] for r in rows] for c in columns})
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_npy(path: str | Path, array: Any) -> None:
    """Save a numpy array atomically."""
    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(Path(path), save)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a finished temp folder into place, replacing a stale one, and record its files
    in the parent folder's manifest."""
    if final_dir.exists():
        shutil.rmtree(final_dir)
    for path in tmp_dir.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~UMASK)
    os.replace(tmp_dir, final_dir)
    written = sorted(p for p in final_dir.rglob("*") if p.is_file())
    now = {p.relative_to(final_dir.parent).as_posix() for p in written}
    gone = [n for n in recorded(final_dir.parent)
            if n.startswith(final_dir.name + "/") and n not in now]
    _record(final_dir.parent, written, gone)


def remove_dir(folder: Path) -> int:
    """Delete a folder the run wrote (a model no later step needs) and mark its files as
    deleted in the parent's manifest; returns the bytes freed."""
    names = [n for n in recorded(folder.parent) if n.startswith(folder.name + "/")]
    freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _record(folder.parent, [], names)  # first: a kill between the two leaves no false record
    shutil.rmtree(folder)
    return freed


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


class RunLock:
    """An exclusive ``flock`` on a lock file of the run directory, held by the one process
    that works on what it guards (the main process of an ``accelerate launch``).

    The run directory has three kinds (:class:`~lmcollapse.layout.RunLayout`): the claim
    lock (``.lock``: held for the seconds it takes to check and record an invocation), one
    per seed's shared part (generation 0 and the human row: a job that needs it while
    another builds it waits, then reuses it), and one per cell of a seed (held for the
    whole job: two jobs never run the same cell).

    The kernel drops a ``flock`` when its process dies, however it dies, so a lock left by
    a killed job is free: the next one takes it over (and logs whose it was). The file
    holds who has it, for the message another job gets. ``what`` names what it guards.
    """

    def __init__(self, path: Path, what: str = "") -> None:
        self.path = path
        self.what = what or str(path.parent)
        self._fd: int | None = None

    def try_acquire(self) -> tuple[bool, str]:
        """Take the lock if it is free. Returns ``(True, who held it before or "")`` or
        ``(False, who holds it now)``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        holder = os.pread(fd, 1000, 0).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, holder or "a live process"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{dt.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
        self._fd = fd
        return True, holder

    def acquire(self) -> str:
        """Take the lock; returns who held it before ("" if nobody). ConfigError when a live
        process holds it."""
        ok, holder = self.try_acquire()
        if not ok:
            raise ConfigError(f"{self.what} is in use by another run ({holder}); wait for it "
                              "to end, or give this run another `experiment` name")
        return holder

    def release(self) -> None:
        if self._fd is not None:  # the file stays: unlinking it could let two runs lock
            os.ftruncate(self._fd, 0)  # empty: released, not left by a dead process
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
