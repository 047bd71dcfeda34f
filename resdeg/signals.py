"""How resdeg stops when it is told to: every termination signal a user, a scheduler or a closed
terminal sends (SIGINT, SIGTERM, SIGHUP) ends the run being trained the way Ctrl-C does: the
exception unwinds through the trainer (the last epoch's checkpoint stays: resumable), the run lock
is released, worker processes are told to do the same and waited for, and the command says so in
one line. Python's default for SIGTERM and SIGHUP is to die on the spot, which left `--jobs N`
workers orphaned and training; so both are turned into `Stopped`, a KeyboardInterrupt, which every
`except KeyboardInterrupt` already handles."""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Stopped(KeyboardInterrupt):
    """A termination signal other than SIGINT, raised where the main thread is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def stop_signals():
    """SIGTERM and SIGHUP raise `Stopped` in the main thread while the block runs (the previous
    handlers come back afterwards: tests call the CLI in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send this process `signum` when its parent dies (even by SIGKILL), so that a
    worker never trains on as an orphan. Best effort: other systems have no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the call: nobody will send it
        os.kill(os.getpid(), signum)
