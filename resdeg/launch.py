"""Cluster launchers: every run of a grid as one submitit job (Slurm: one job array) running the
same engine (`runner.train_one`, under the run lock) into the shared result store.

    resdeg run-all --launcher slurm --partition gpu --gpus-per-run 1 --time 8:00:00 --wait

Each submitted run gets `submitted.json` in its folder (job id, time, and, once the job ends,
its outcome), written atomically; `resdeg status` joins it with the run's lock and run.json:
submitted (queued), running (its lock is held), done, or failed. submitit's own files (the
pickled call, stdout and stderr of every job) go to <results>/.slurm/<job id>/.

`--launcher submitit-local` runs the same jobs through submitit's LocalExecutor, as processes
of this machine: the launcher path without a cluster (tests use it).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .atomic import atomic_write_json
from .errors import ResdegError
from .locks import LOCK_FILE, lock_state
from .records import now_iso
from .runner import Executor, Outcome, StoreProgress, TrainingJob, check_corrupt, plan, train_one
from .store import SUBMISSION_FILE, ensure_writable

SUBMISSION_SCHEMA = "resdeg.submission"
LAUNCHERS = ("local", "slurm", "submitit-local")
DEFAULT_TIME = "4:00:00"



# -- options ----------------------------------------------------------------------------------

def check_launcher(name: str) -> str:
    if name not in LAUNCHERS:
        raise ResdegError(f"--launcher {name!r}: choose one of {', '.join(LAUNCHERS)}")
    return name


def parse_time(text: str) -> int:
    """A Slurm time limit (MINUTES, H:MM:SS, D-H, D-H:MM, D-H:MM:SS) in whole minutes."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?\s*", str(text))
    if not m:
        raise ResdegError(f"--time {text!r}: expected MINUTES, H:MM:SS or D-H:MM:SS")
    days, a, b, c = m.groups()
    if days is None and b is None:
        minutes = int(a)  # MINUTES
    elif days is None and c is None:
        minutes = int(a) + int(b) / 60  # MM:SS
    else:
        minutes = int(days or 0) * 1440 + int(a) * 60 + int(b or 0) + int(c or 0) / 60
    minutes = int(-(-minutes // 1))  # round seconds up
    if minutes < 1:
        raise ResdegError(f"--time {text!r}: must be at least one minute")
    return minutes


def parse_extra(items) -> dict[str, str]:
    """--slurm-extra KEY=VALUE, repeatable: any sbatch option (account=abc, qos=high, constraint=a100,
    cpus-per-task=8, mem=32G); keys are spelled with underscores, as submitit does."""
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key) or value.strip() == "":
            raise ResdegError(f"--slurm-extra {item!r}: expected KEY=VALUE, e.g. --slurm-extra account=myproject")
        out[key] = value.strip()
    return out


def require_submitit():
    try:
        import submitit  # optional dependency: only the cluster launchers need it
    except ImportError:
        raise ResdegError("the cluster launcher needs the Python package submitit: pip install submitit") from None
    return submitit


def require_slurm() -> None:
    missing = [c for c in ("sbatch", "srun", "squeue") if shutil.which(c) is None]
    if missing:
        raise ResdegError(f"--launcher slurm: Slurm's {missing[0]} is not on PATH; install the Slurm client "
                          f"(Debian/Ubuntu: apt-get install slurm-client) or run this on the cluster's login node")


# -- submission records -----------------------------------------------------------------------

def read_submission(folder: str | Path) -> dict | None:
    """A run folder's submission record, None when there is none or it is unreadable."""
    try:
        d = json.loads((Path(folder) / SUBMISSION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("schema") == SUBMISSION_SCHEMA and d.get("job_id") else None


def _update_submission(folder: Path, job_id: str, **fields) -> None:
    """Merge fields into the record of `job_id` (a record of another job is replaced)."""
    old = read_submission(folder)
    base = old if old and old.get("job_id") == job_id else {"schema": SUBMISSION_SCHEMA, "job_id": job_id}
    atomic_write_json(folder / SUBMISSION_FILE, {**base, **fields})


# -- what a job runs --------------------------------------------------------------------------

def run_job(task: TrainingJob, time_min: int) -> Outcome:
    """The body of one cluster job: train one run into its folder, under its lock, stopping
    cleanly (resumable) before the job's time limit; record the outcome beside the run."""
    start = time.time()
    budget = 60 * time_min
    deadline = start + budget - min(600.0, 0.1 * budget)
    task = replace(task, deadline=min(d for d in (task.deadline, deadline) if d is not None))
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        torch.set_num_threads(int(cpus))
    job_id = _my_job_id()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731  (the job's log file)
    try:
        out = train_one(task, log=log)
    except ResdegError as e:
        out = Outcome(task.name, "failed", f"{'failed':<9} {task.name}: {e}", error=f"{task.name}: {e}")
    except BaseException as e:
        if job_id:
            _update_submission(task.folder, job_id, ended=now_iso(), outcome="failed",
                               error=f"{type(e).__name__}: {e}"[:300])
        raise
    if job_id:
        _update_submission(task.folder, job_id, ended=now_iso(), outcome=out.result, status=out.status,
                           error=out.error, host=socket.gethostname())
    log(out.line)
    return out


def _my_job_id() -> str | None:
    try:
        import submitit  # optional dependency: there in a submitit job, perhaps absent elsewhere

        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not in a submitit job (called directly)
        return None


# -- the launcher -----------------------------------------------------------------------------

@dataclass
class SubmititLauncher(Executor):
    """Runs each task as one submitit job: `cluster` slurm (one array for the grid) or local
    (submitit's LocalExecutor: processes of this machine). run() submits and waits (--wait)."""
    results: Path
    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_run: int = 0
    time: str = DEFAULT_TIME
    extra: dict = field(default_factory=dict)
    poll_s: float = 10.0  # squeue at most this often while waiting
    local = False

    def __post_init__(self):
        self.results = Path(self.results)
        self.time_min = parse_time(self.time)
        if self.gpus_per_run < 0:
            raise ResdegError(f"--gpus-per-run {self.gpus_per_run}: must be 0 or more")
        self.name = self.cluster

    @property
    def log_dir(self) -> Path:
        return self.results / ".slurm"

    def task_device(self, device_name: str) -> str:
        return "auto"  # the job's node decides: the GPU it was given, else its CPU

    def parameters(self, n_tasks: int = 1) -> dict:
        """The submitit SlurmExecutor parameters (sbatch options) of the grid's job array."""
        p = {"job_name": "resdeg", "time": self.time_min}
        if self.partition:
            p["partition"] = self.partition
        if self.gpus_per_run:
            p["gpus_per_node"] = self.gpus_per_run
        if self.extra:
            p["additional_parameters"] = dict(self.extra)
        return p

    def preview(self, n_tasks: int) -> str:
        """The sbatch script submitit would submit for `n_tasks` runs (--dry-run)."""
        require_submitit()
        from submitit.slurm import slurm  # optional dependency: only the cluster launchers need it

        command = f"{sys.executable} -u -m submitit.core._submit {self.log_dir / '%j'}"
        try:
            return slurm._make_sbatch_string(command=command, folder=self.log_dir / "%j",
                                             map_count=n_tasks if n_tasks > 1 else None, **self.parameters())
        except (TypeError, AttributeError, ValueError) as e:  # a submitit that renamed its internals
            lines = [f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in sorted(self.parameters().items())]
            return "\n".join(lines + [f"(submitit's own script not available: {e})"])

    def check_available(self) -> None:
        """One line naming what to install when submitit (or, for Slurm, its commands) is missing."""
        require_submitit()
        if self.cluster == "slurm":
            require_slurm()

    def _executor(self):
        submitit = require_submitit()
        logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct warnings; states are followed here
        if self.cluster == "slurm":
            require_slurm()
            ex = submitit.SlurmExecutor(folder=self.log_dir / "%j")
            try:
                ex.update_parameters(**self.parameters())
            except ValueError as e:
                raise ResdegError(f"--slurm-extra: {str(e).splitlines()[0]}") from None
            return ex
        ex = submitit.LocalExecutor(folder=self.log_dir / "%j")
        ex.update_parameters(timeout_min=self.time_min, gpus_per_node=self.gpus_per_run)
        return ex

    def submit(self, tasks: list[TrainingJob], log=print) -> tuple[list, list]:
        """Submit every task whose job from an earlier submission is not still queued or running;
        record each submission in its run's folder. Returns ([(task, job)] submitted now, the same
        for the jobs found in the queue)."""
        tasks, queued = self._split_queued(tasks, log)
        if not tasks:
            return [], queued
        ex = self._executor()
        try:
            with ex.batch():
                jobs = [ex.submit(run_job, replace(t, deadline=None, progress=False), self.time_min) for t in tasks]
        except (OSError, subprocess.CalledProcessError) as e:
            msg = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
            if isinstance(msg, bytes):
                msg = msg.decode(errors="replace")
            raise ResdegError(f"submission failed: {' '.join(str(msg).split())[:300]}") from None
        except Exception as e:  # submitit.core.utils.FailedSubmissionError and the like
            if type(e).__module__.startswith("submitit"):
                raise ResdegError(f"submission failed: {' '.join(str(e).split())[:300]}") from None
            raise
        now = now_iso()
        for t, job in zip(tasks, jobs, strict=True):
            t.folder.mkdir(parents=True, exist_ok=True)
            _update_submission(t.folder, str(job.job_id), launcher=self.cluster, submitted=now,
                               submitted_from=socket.gethostname(), run=t.name, log_dir=str(job.paths.folder))
        return list(zip(tasks, jobs, strict=True)), queued

    def _split_queued(self, tasks, log):
        """(tasks to submit, [(task, job)] whose last submission is still queued or running in Slurm):
        a run is not submitted twice."""
        if self.cluster != "slurm" or not tasks:
            return tasks, []
        records = {t.folder: read_submission(t.folder) for t in tasks}
        ids = {r["job_id"] for r in records.values() if r and not r.get("ended")}
        live = _squeue(ids) if ids else set()
        keep, queued = [], []
        for t in tasks:
            r = records[t.folder]
            if r and live and r["job_id"] in live:
                log(f"queued    {t.name}: job {r['job_id']} is still in the queue; not submitted again")
                from submitit.slurm.slurm import SlurmJob  # optional dependency: only the cluster launchers need it

                queued.append((t, SlurmJob(folder=self.log_dir / "%j", job_id=r["job_id"])))
            else:
                keep.append(t)
        return keep, queued

    def run(self, tasks, log=print, progress=True):
        jobs, queued = self.submit(tasks, log)
        for task, job in jobs:
            log(f"submitted {task.name}: job {job.job_id}")
        return self.wait(jobs + queued, log, progress)

    def wait(self, jobs: list[tuple[TrainingJob, object]], log=print, progress=True) -> list[Outcome]:
        """Follow the jobs until each has ended, showing progress from the store (each run's lock
        and run.json); the outcome of each as the job returned it."""
        outcomes, pending, missing = [], list(jobs), {}
        pause = min(0.5, self.poll_s)  # short at first (quick jobs, tests), then up to poll_s
        with StoreProgress([t for t, _ in jobs], progress, log) as bars:
            try:
                while pending:
                    live = _squeue({str(j.job_id) for _, j in pending}) if self.cluster == "slurm" else None
                    for task, job in list(pending):
                        out = self._ended(task, job, live, missing)
                        if out is None:
                            continue
                        pending.remove((task, job))
                        for note in out.notes:
                            bars.log(note)
                        bars.log(out.line)
                        bars.finish(task)
                        outcomes.append(out)
                    running = sum((t.folder / LOCK_FILE).exists() for t, _ in pending)
                    bars.poll(postfix=f"{running} running, {len(pending) - running} queued")
                    if pending:
                        time.sleep(pause)
                        if self.cluster == "slurm":  # squeue: not too often; local processes: cheap to ask
                            pause = min(self.poll_s, pause * 1.5)
            except KeyboardInterrupt:
                bars.log(f"stopped waiting; {len(pending)} job(s) go on (`resdeg status` follows them)")
                raise
        return outcomes

    def _ended(self, task: TrainingJob, job, live: set[str] | None, missing: dict) -> Outcome | None:
        """The job's outcome once it has ended, else None."""
        jid = str(job.job_id)
        # Slurm: the result file, else the queue (squeue); submitit would ask sacct, which clusters
        # without accounting lack. Local: submitit knows its processes.
        if not (job.paths.result_pickle.exists() if self.cluster == "slurm" else job.done()):
            if live is None or jid in live:
                return None
            # not in the queue and no result: give the file system two polls to show the result
            missing[jid] = missing.get(jid, 0) + 1
            if missing[jid] < 3 or job.paths.result_pickle.exists():
                return None
            err = f"{task.name}: job {jid} ended without a result (cancelled, out of time or memory?); " \
                  f"see {job.paths.stderr}"
            return Outcome(task.name, "failed", f"{'failed':<9} {err}", error=err)
        try:
            return job.result()
        except Exception as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else type(e).__name__
            err = f"{task.name}: job {jid} failed: {last[:200]}; see {job.paths.stderr}"
            return Outcome(task.name, "failed", f"{'failed':<9} {err}", error=err)


def _squeue(job_ids: set[str]) -> set[str] | None:
    """The ids (array tasks expanded, as 123_4) among `job_ids`' jobs still pending or running in
    Slurm; None when squeue cannot say."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return set()
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(bases)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        # squeue refuses ids it no longer knows ("Invalid job id"): then none of them is queued
        return set() if "invalid job id" in res.stderr.lower() else None
    return {line.strip() for line in res.stdout.splitlines() if line.strip()}


# -- `resdeg status` --------------------------------------------------------------------------

def annotate_status(results: str | Path, rows: list[dict]) -> list[dict]:
    """Join the launcher's view to `resdeg status` rows: each gets "activity" (running /
    submitted / failed / stale lock, or None) and "job_id"; runs submitted but not yet started
    (no run.json) get rows of their own."""
    results = Path(results)
    by_path = {Path(r["path"]): r for r in rows}
    keys = list(rows[0]) if rows else ["protocol", "dataset", "model", "variant", "seed", "status", "problem",
                                       "epochs_done", "epochs", "train_acc", "eval_train_acc", "test_acc",
                                       "config_hash", "path", "probed", "probe_problem"]
    extra = set()
    if results.is_dir():
        for pattern in (SUBMISSION_FILE, LOCK_FILE):
            extra |= {p.parent for p in results.glob(f"*/*/*/{pattern}")}
    for folder in sorted(extra - set(by_path)):
        sub = read_submission(folder) or {}
        parts = folder.name.split("-")
        row = dict.fromkeys(keys)
        row.update(protocol=folder.parent.parent.name, dataset=folder.parent.name, path=str(folder),
                   status="new", probed=False)
        if len(parts) == 4 and parts[2][1:].isdigit():
            row.update(model=parts[0], variant=parts[1], seed=int(parts[2][1:]))
        rows.append(row)
        by_path[folder] = row
    subs = {folder: read_submission(folder) for folder in by_path}
    waiting = {s["job_id"] for s in subs.values() if s and s.get("launcher") == "slurm" and not s.get("ended")}
    live = _squeue(waiting) if waiting and shutil.which("squeue") else None  # None: cannot tell
    for folder, row in by_path.items():
        state, info, why = lock_state(folder)
        sub = subs[folder]
        row["job_id"] = (info.job_id if info and state == "held" and info.job_id else None) or (sub or {}).get("job_id")
        if state == "held":
            row["activity"] = f"running on {info.host}"
        elif state == "stale":
            row["activity"] = f"stale lock: {why}"
        elif sub and row["status"] in ("new", "partial"):
            outcome = sub.get("outcome")
            if not sub.get("ended") and live is not None and sub["job_id"] not in live and sub["job_id"] in waiting:
                row["activity"] = f"lost: job {sub['job_id']} left the queue without a result (cancelled? see " \
                                  f"{sub.get('log_dir') or 'its log'}; run-all again to resubmit)"
            elif not sub.get("ended"):
                row["activity"] = f"submitted: job {sub['job_id']}"
            elif outcome == "trained":  # stopped before the job's time limit
                row["activity"] = f"out of time: job {sub['job_id']} (resumable: submit again)"
            else:
                row["activity"] = f"{outcome or 'ended'}: job {sub['job_id']}"
                if sub.get("error"):
                    row["activity"] += f" ({sub['error']})"
        else:
            row["activity"] = None
    return rows


def submit_grid(configs, results, launcher: SubmititLauncher, data_dir=None, force: bool = False, out=print,
                log=print) -> list:
    """`run-all --launcher slurm` without --wait: submit what needs training, print the job ids
    (one line each: job id, run), and return; `resdeg status` follows the jobs from the store."""
    ensure_writable(results)
    planned = plan(configs, results, force=force)
    for p in planned:
        if p.state in ("done", "diverged"):
            log(f"{p.state:<9} {p.cfg.run_name} (cached)")
    tasks = [TrainingJob(p.cfg, p.folder, "auto", str(data_dir) if data_dir else None, force)
             for p in planned if p.todo]
    jobs, _ = launcher.submit(tasks, log)
    for task, job in jobs:
        out(f"{job.job_id} {task.name}")
    if jobs:
        log(f"{len(jobs)} job{'s' if len(jobs) > 1 else ''} submitted; follow them with `resdeg status --results "
            f"{results}`; when they are done, `resdeg probe` and `resdeg report` (or run-all again with --wait)")
    check_corrupt(planned)
    return jobs
