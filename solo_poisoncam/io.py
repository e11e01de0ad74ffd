"""Atomic file output, content hashing (cache keys) and the run lock of an output folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from solo_poisoncam.checks import PoisonCamError, check

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the mode open() would give
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


LOCK_NAME = ".poisoncam.lock"


@contextlib.contextmanager
def run_lock(out: PathLike) -> Iterator[Path]:
    """Hold ``out`` for this run: an exclusive ``flock`` on ``out/.poisoncam.lock``, refused with one
    line naming the holder's pid while another run holds it. The kernel drops the lock when its
    holder dies, so a killed run leaves no stale lock. Folders it creates are removed again if they
    are left empty (a refused or failed run leaves nothing). A child of the holder (Lightning's DDP
    launcher re-runs the command) shares its parent's lock."""
    import fcntl

    out = Path(out)
    created = [d for d in (out, *out.parents) if not d.exists()]
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = None
    try:
        while fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                fd = None
                if holder == str(os.getppid()):
                    yield out
                    return
                raise PoisonCamError(f"'{out}' is in use by another run (pid {holder or '?'}); wait for it to finish "
                                     "or choose another --out") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file after we opened it: lock the new one
                os.close(fd)
                fd = None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield out
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still locked, so no other run can take a file about to vanish
            os.close(fd)
        for d in created:  # innermost first
            with contextlib.suppress(OSError):
                d.rmdir()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_indexes(path: PathLike):
    """Dataset indexes from a text file, one integer per line (kept.txt / removed.txt)."""
    p = Path(path)
    check(p.is_file(), f"index file '{path}' does not exist")
    try:
        return [int(line) for line in p.read_text().split()]
    except ValueError as e:
        raise PoisonCamError(f"'{path}' must hold one integer index per line: {e}") from e


def write_lines(path: PathLike, values) -> Path:
    return write_text(path, "".join(f"{v}\n" for v in values))


def save_npy(path: PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


def save_torch(path: PathLike, obj: Any) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def hash_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex, first 16 chars)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()[:16]


def hash_obj(*parts: Any) -> str:
    """Stable sha256 of JSON-serialisable parts and numpy arrays (hex, first 16 chars)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]
