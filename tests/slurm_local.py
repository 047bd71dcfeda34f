"""A throwaway single-node Slurm on localhost for the launcher tests: its own munged (own key and
socket), slurmctld and slurmd (root, proctrack/linuxproc, no cgroups, no accounting), on free
ports, in a temporary folder. `start()` returns the environment for Slurm's clients (SLURM_CONF)
or raises SlurmUnavailable saying exactly why it could not start.

Needs root and Debian's `slurm-wlm` and `munge` (.ci/run installs them)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scontrol")


class SlurmUnavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.env: dict[str, str] = {}
        self.pid_files: list[Path] = []

    def _run(self, *cmd, env=None, what=None):
        try:
            res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, env=env)
        except (OSError, subprocess.SubprocessError) as e:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {e}") from None
        if res.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` exited {res.returncode}: "
                                   f"{(res.stderr or res.stdout).strip()[:300]} {what or ''}".strip())
        return res

    def start(self, timeout: float = 60) -> dict[str, str]:
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting munged, slurmctld and slurmd needs root")
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chmod(key, 0o400)
        sock = r / "munge" / "munge.socket"
        self.pid_files.append(r / "munge" / "munged.pid")
        self._run("munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={r}/munge/munged.pid",
                  f"--log-file={r}/log/munged.log", f"--seed-file={r}/munge/munged.seed",
                  what=f"(log: {_tail(r / 'log' / 'munged.log')})")
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        conf = r / "slurm.conf"
        conf.write_text("\n".join([
            "ClusterName=resdegtest", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2", "MpiDefault=none", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env = {"SLURM_CONF": str(conf)}
        env = {**os.environ, **self.env}
        self.pid_files += [r / "slurmctld.pid", r / "slurmd.pid"]
        self._run("slurmctld", "-c", "-f", str(conf), env=env, what=f"(log: {_tail(r / 'log' / 'slurmctld.log')})")
        self._run("slurmd", "-c", "-f", str(conf), env=env, what=f"(log: {_tail(r / 'log' / 'slurmd.log')})")
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:  # poll until the node takes jobs
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            state = (res.stdout or res.stderr).strip()
            if res.returncode == 0 and state.split() and state.split()[0].startswith("idle"):
                return self.env
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle within {timeout:.0f}s (sinfo: {state!r}; slurmctld: "
                               f"{_tail(r / 'log' / 'slurmctld.log')}; slurmd: {_tail(r / 'log' / 'slurmd.log')})")

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons this object started (by their pid files)."""
        if self.env:
            subprocess.run(["scancel", "--user", str(os.getuid())], env={**os.environ, **self.env},
                           capture_output=True, timeout=30)
        pids = []
        for pid_file in self.pid_files:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError, IndexError):
                continue
        deadline = time.time() + 15  # a clean exit
        for pid in pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
