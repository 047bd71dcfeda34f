"""Run locks: one process at a time trains a run folder, across processes and hosts sharing a store.

The lock is `run.lock` in the run folder, a small JSON object:

    {"schema": "resdeg.lock", "host": ..., "pid": ..., "started": ISO time, "started_unix": ...,
     "token": random hex, "boot_id": ..., "pid_start": ..., "job_id": ..., "heartbeat_s": ...}

It is created atomically and whole: the object is written and fsynced to a temporary file,
which is then hard-linked to `run.lock`. link() fails when the name exists, on local file
systems and on NFS (where O_EXCL was long unreliable; a lost reply is detected by the link
count of the temporary file), and a reader never sees half a lock.

The heartbeat is the lock file's modification time: a daemon thread touches it every
`heartbeat_s` seconds (30 by default) while the run trains. Touching never creates or rewrites
the file, so a heartbeat cannot resurrect a lock that was taken over; the thread also checks
that the lock still holds its token and says so once if it was taken over.

A lock is stale when its host is this host and its process is gone (or is another process
with the same pid, or the host was rebooted), or when its heartbeat is older than
`stale_after_s` (300 by default), whatever the host. A lock file that cannot be read (garbage)
is stale too, with a message. A stale lock is taken over in place: the contender first creates
a takeover marker named after that lock's token (link() again: of several contenders judging
the same stale lock, exactly one gets it), checks that the lock is still the one it judged,
then renames its own lock over it (os.replace: the name never goes missing, so nobody can slip
in between). The run then resumes from its checkpoint, if it has one.

A process that lost its lock (paused past the stale timeout, then resumed) finds out within one
heartbeat (`RunLock.check`, asked at every training step) and before any write (`RunLock.verify`
reads the lock file): it raises LockLost and writes nothing more to the run.

$RESDEG_LOCK_HEARTBEAT_S and $RESDEG_LOCK_STALE_S change the two periods (tests; file
systems with coarse timestamps or clocks that disagree by minutes: raise the stale timeout).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ResdegError
from .records import now_iso
from .store import CHECKPOINT_FILE

LOCK_FILE = "run.lock"
LOCK_SCHEMA = "resdeg.lock"
HEARTBEAT_S, STALE_AFTER_S = 30.0, 300.0


class LockLost(ResdegError):
    """This process's lock was taken over (after a pause past the stale timeout: Ctrl-Z, a
    suspended laptop, a Slurm suspend) or removed: it must stop writing the run."""


class Locked(Exception):
    """The run is being trained by a live process (not an error: the caller skips the run)."""

    def __init__(self, holder: LockInfo):
        super().__init__(holder.describe())
        self.holder = holder


@dataclass(frozen=True)
class LockSettings:
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S

    @classmethod
    def from_env(cls) -> LockSettings:
        def num(name, default):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                v = float(raw)
            except ValueError:
                raise ResdegError(f"${name}={raw!r}: expected a number of seconds") from None
            if not v > 0:
                raise ResdegError(f"${name}={raw!r}: must be positive")
            return v

        s = cls(num("RESDEG_LOCK_HEARTBEAT_S", HEARTBEAT_S), num("RESDEG_LOCK_STALE_S", STALE_AFTER_S))
        if s.stale_after_s < 2 * s.heartbeat_s:
            raise ResdegError(f"lock stale timeout {s.stale_after_s:g}s must be at least twice the heartbeat "
                              f"period {s.heartbeat_s:g}s ($RESDEG_LOCK_STALE_S, $RESDEG_LOCK_HEARTBEAT_S)")
        return s


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says (or, for a damaged one, why it says nothing), and its heartbeat."""
    path: Path
    heartbeat: float  # the file's mtime (time.time() scale)
    host: str | None = None
    pid: int | None = None
    started: str | None = None
    token: str | None = None
    boot_id: str | None = None
    pid_start: int | None = None
    job_id: str | None = None
    problem: str | None = None  # set when the file is not a readable lock
    ident: str = ""  # the token, or a digest of an unreadable file's bytes: which lock this is

    def describe(self, now: float | None = None) -> str:
        age = max(0.0, (now or time.time()) - self.heartbeat)
        if self.problem:
            return f"unreadable lock file {self.path} ({self.problem})"
        job = f", job {self.job_id}" if self.job_id else ""
        return f"locked by {self.host} pid {self.pid}{job} since {self.started}, heartbeat {age:.0f}s ago"


# -- this process -----------------------------------------------------------------------------

def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _boot_id() -> str | None:
    text = _read_text("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc (Linux)."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
        return fields[0], int(fields[19])
    except (ValueError, IndexError):
        return None


def _job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or None



def _my_lock(token: str, settings: LockSettings) -> dict:
    stat = _proc_stat(os.getpid())
    return {"schema": LOCK_SCHEMA, "host": socket.gethostname(), "pid": os.getpid(), "started": now_iso(),
            "started_unix": round(time.time(), 3), "token": token, "boot_id": _boot_id(),
            "pid_start": stat[1] if stat else None, "job_id": _job_id(), "heartbeat_s": settings.heartbeat_s}


# -- reading and judging a lock ---------------------------------------------------------------

def read_lock(path: str | Path) -> LockInfo | None:
    """The lock at `path`, None when there is none. Never raises on a damaged file."""
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return LockInfo(path, time.time(), problem=f"cannot read it: {e.strerror or e}", ident="unreadable")
    digest = "x" + hashlib.sha256(raw).hexdigest()[:24]
    try:
        d = json.loads(raw.decode())
        if not isinstance(d, dict) or d.get("schema") != LOCK_SCHEMA:
            raise ValueError("not a resdeg lock")
        host, pid, token = d["host"], d["pid"], d["token"]
        if not (isinstance(host, str) and isinstance(pid, int) and isinstance(token, str)):
            raise ValueError("host, pid or token of the wrong type")
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        return LockInfo(path, st.st_mtime, problem=f"garbage: {type(e).__name__}: {str(e)[:60]}", ident=digest)
    opt = lambda k, t: d.get(k) if isinstance(d.get(k), t) else None  # noqa: E731
    ident = token if re.fullmatch(r"[0-9A-Za-z_-]{1,64}", token) else digest
    return LockInfo(path, st.st_mtime, host, pid, opt("started", str), token, opt("boot_id", str),
                    opt("pid_start", int), opt("job_id", str), ident=ident)


def stale_reason(info: LockInfo, settings: LockSettings, now: float | None = None) -> str | None:
    """Why the lock is stale, or None while its holder is alive."""
    if info.problem:
        return info.problem
    age = (now or time.time()) - info.heartbeat
    if age > settings.stale_after_s:
        return f"no heartbeat for {age:.0f}s (timeout {settings.stale_after_s:g}s)"
    if info.host == socket.gethostname():
        if info.boot_id and _boot_id() and info.boot_id != _boot_id():
            return "its host was rebooted since"
        if info.pid == os.getpid():
            return None  # this process (a lock taken twice would be a bug, never stale)
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return f"process {info.pid} on this host is gone"
        except PermissionError:
            pass  # exists, belongs to another user
        stat = _proc_stat(info.pid)
        if stat and stat[0] == "Z":
            return f"process {info.pid} on this host has exited"
        if stat and info.pid_start is not None and stat[1] != info.pid_start:
            return f"process {info.pid} on this host is gone (the pid now names another process)"
    return None


# -- taking and holding a lock ----------------------------------------------------------------

def _write_tmp(path: Path, content: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _link_new(path: Path, content: bytes) -> bool:
    """Create `path` holding `content` if it does not exist; True when this call created it."""
    tmp = _write_tmp(path, content)
    try:
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            # NFS: the link may have been made though the reply was lost; the count tells.
            return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


MARKER_STALE_S = 60.0  # a takeover takes milliseconds; a marker this old was left by a crash


def _take_over(info: LockInfo, content: bytes) -> bool:
    """Replace the stale lock `info` by ours (True), unless another contender is taking it over
    or it changed since it was judged (False: look again)."""
    path = info.path
    marker = path.with_name(f".{path.name}.takeover-{info.ident}")
    if not _link_new(marker, content):
        try:
            if time.time() - marker.stat().st_mtime > MARKER_STALE_S:
                marker.unlink()
        except FileNotFoundError:
            pass
        return False
    try:
        now = read_lock(path)
        if now is None or now.ident != info.ident or now.heartbeat > info.heartbeat + 1e-3:
            return False  # released, replaced or refreshed meanwhile
        os.replace(_write_tmp(path, content), path)  # the name never goes missing
        return True
    finally:
        marker.unlink(missing_ok=True)


class RunLock:
    """The lock of one run folder held by this process; `with acquire(...) as lock:` releases it on
    success, error and KeyboardInterrupt."""

    def __init__(self, path: Path, token: str, settings: LockSettings, log):
        self.path, self.token, self.settings, self.log = path, token, settings, log
        self.lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"resdeg-heartbeat-{path.parent.name}", daemon=True)
        self._thread.start()

    def _still_mine(self) -> bool:
        info = read_lock(self.path)
        if info is None or info.token != self.token:
            holder = "removed" if info is None else f"taken over ({info.describe()})"
            self.lost = f"lock on {self.path.parent.name} was {holder} while this process trained it"
            return False
        return True

    def check(self) -> None:
        """Raise LockLost once the heartbeat thread has found the lock gone: cheap (a flag), so
        the trainer asks at every step and stops within one heartbeat."""
        if self.lost:
            raise LockLost(self.lost)

    def verify(self) -> None:
        """Raise LockLost unless the lock file still holds this process's token: read before every
        write to the run folder, so that a process resumed after a long pause writes nothing the
        process that took the run over has written since."""
        if not self.heartbeat():
            raise LockLost(self.lost)

    def heartbeat(self) -> bool:
        """Refresh the heartbeat; False (once logged) when the lock is no longer ours. Called by the
        heartbeat thread and, before each write, by the trainer: one at a time."""
        with self._mutex:
            if self.lost:
                return False
            if not self._still_mine():
                self.log(f"warning: {self.lost}")
                return False
            try:
                os.utime(self.path)
            except OSError as e:
                self.log(f"warning: cannot refresh the lock heartbeat of {self.path.parent.name} ({e.strerror or e})")
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            if not self.heartbeat():
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is None and self._still_mine():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _what_follows(folder: Path) -> str:
    """The end of the takeover message: a run with a checkpoint resumes from it; say nothing of a
    checkpoint where there is none (a run that never finished an epoch, the report's lock)."""
    return "; the run resumes from its checkpoint" if (folder / CHECKPOINT_FILE).exists() else ""


def acquire(folder: str | Path, settings: LockSettings | None = None, log=print) -> RunLock:
    """Lock a run folder for this process (creating the folder); raise `Locked` when a live
    process holds it; take a stale lock over (saying why through `log`)."""
    settings = settings or LockSettings.from_env()
    folder = Path(folder)
    path = folder / LOCK_FILE
    token = secrets.token_hex(16)
    content = (json.dumps(_my_lock(token, settings), indent=1) + "\n").encode()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(200):  # each round: create it, or judge its holder (stale: take it over)
            if _link_new(path, content):
                return RunLock(path, token, settings, log)
            info = read_lock(path)
            if info is None:
                continue  # released in between
            reason = stale_reason(info, settings)
            if reason is None:
                raise Locked(info)
            if _take_over(info, content):
                log(f"taking over a stale lock on {folder.name}: {reason}{_what_follows(folder)}")
                return RunLock(path, token, settings, log)
            time.sleep(0.01)  # another process is taking it over: look again
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise ResdegError(f"cannot lock {folder} ({e.strerror}): is the result store writable?") from None
        raise ResdegError(f"cannot lock {folder} ({e.strerror or e}); remove {path} by hand if it is damaged") \
            from None
    raise ResdegError(f"cannot lock {folder}: its lock keeps changing under this process; check {path}")


def lock_state(folder: str | Path, settings: LockSettings | None = None) -> tuple[str, LockInfo | None, str | None]:
    """("free" | "held" | "stale", the lock, why stale) of a run folder, for status displays."""
    info = read_lock(Path(folder) / LOCK_FILE)
    if info is None:
        return "free", None, None
    reason = stale_reason(info, settings or LockSettings.from_env())
    return ("held", info, None) if reason is None else ("stale", info, reason)
