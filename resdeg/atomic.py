"""Atomic writes: a temp file in the same folder, flushed, then renamed over the target.

A crash leaves either the old file or the new one, never half of either. So does a full or
read-only disk: a failed write removes its temp file, leaves the old file as it was, and raises
an OSError that names the target path (the CLI turns ENOSPC, EROFS, EACCES into one line).

The file gets the mode a plain open() would give it (0666 less the umask): mkstemp's 0600 would
keep a store shared by a group unreadable to everyone but its writer.
"""
from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from e
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            view = memoryview(data).cast("B")
            while view:  # os.write may write less than asked (a nearly full disk, a signal)
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the data is on disk before the rename makes it visible
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # already renamed, or the file system refuses even that: nothing more to do
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (/proc), else by the
    set-and-restore that is the only portable way."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _naming(e: OSError, path: Path) -> OSError:
    """The same error with the target as its file name (not a temp file's name, or none at all,
    as os.write and os.fsync give), so that a message can say which file could not be written."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))  # the errno's subclass


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (best effort: not every file system can sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def npz_bytes(**arrays) -> bytes:
    """A compressed .npz of the arrays, in memory (deterministic: zip entries carry a fixed 1980 timestamp)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Returns False where the system or file system cannot (another OS, an old kernel, some
    network file systems); the caller then falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        _fsync_dir(Path(a).parent)
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
