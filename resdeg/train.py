"""Training one run, in two layers: `Engine` computes (epochs of SGD on device-resident data,
telemetry in device buffers; no files, no process-wide state) and `Trainer` keeps the run folder
(checkpoint per epoch, resume, run.json, telemetry file). `numerics` sets the process-wide torch
flags a run needs, in one place, and restores them.

Resume is exact on CPU: each epoch's shuffle and augmentation come from a generator seeded
by (seed, epoch), and the checkpoint holds model, optimiser, history and per-step arrays, so a
killed run restarts its unfinished epoch and reaches the numbers it would have had.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .atomic import atomic_torch_save
from .config import CONFIG_SCHEMA
from .config import resolve_precision as resolve_config_precision
from .data import Dataset, fixed_subset, preprocess, test_subset
from .errors import ResdegError
from .models import model_from_config
from .records import now_iso
from .store import (
    CHECKPOINT_FILE,
    TELEMETRY_ARRAYS,
    Epoch,
    RunRecord,
    Summary,
    TelemetryEntry,
    write_run,
    write_telemetry,
    write_weights,
)
from .study import VARIANTS
from .telemetry import StageTelemetry

EVAL_BATCH = 500
DIVERGENCE_CHECK_STEPS = 50  # how often an epoch looks at its running loss for a non-finite value


class UnusableCheckpoint(ResdegError):
    """A checkpoint that cannot be resumed (damaged, or another config's)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResdegError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ResdegError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(cfg, device: torch.device) -> str:
    """The config's precision (configs of schema 1 may still say "auto")."""
    return resolve_config_precision(cfg.precision, device.type)


def lr_at(cfg, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a global step: linear warm-up, then constant, cosine or step decay."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "multistep":  # He et al.: /10 at 50% and 75% of training
        return cfg.lr * 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return cfg.lr


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches of an epoch: ceil(n / batch_size), except that a last batch of a single image is
    merged into the one before (which then holds batch_size + 1 images). BatchNorm in training
    mode cannot normalise one image whose maps are 1x1 ("Expected more than 1 value per channel"),
    and a one-image step would be the noisiest of the epoch; merging keeps every image in every epoch
    and changes nothing where the last batch is larger."""
    steps = max(1, math.ceil(n_images / batch_size))
    return steps - 1 if steps > 1 and n_images % batch_size == 1 else steps


def check_batches(cfg, n_train: int | None = None) -> None:
    """A one-line error before any training where every batch would hold one image and BatchNorm
    must normalise it: batch_size 1, or a training set of one image (`n_train`, the images the
    run uses; None: judged from the config alone)."""
    if not VARIANTS[cfg.variant].norm:
        return
    fix = "or choose a variant without BatchNorm (Nbn, Nboth, Fixup, SkipInit)"
    if cfg.batch_size == 1:
        raise ResdegError(f"batch size 1 with {cfg.variant}: BatchNorm normalises over the images of a batch and "
                          f"needs at least 2; use a batch size of 2 or more (--set batch_size=..., bench: "
                          f"--batch-size), {fix}")
    used = cfg.train_images if n_train is None else n_train
    if used == 1:
        raise ResdegError(f"{cfg.model} {cfg.variant}: the training set holds 1 image and BatchNorm needs at least 2 "
                          f"per batch; train on more images (--set train_images=...), {fix}")


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: torch.device, precision: str) -> dict:
    import torchvision  # for its version alone: slow to import, kept off run-all's import path

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"resdeg": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "device_type": device.type, "device": name, "cpu_threads": torch.get_num_threads(),
            "precision": precision, "git_commit": commit}


@torch.no_grad()
def evaluate(model, x_u8, y, cfg, precision: str, channels_last: bool) -> tuple[float, float]:
    """Accuracy and mean loss in eval mode; one host sync at the end."""
    model.eval()
    correct = torch.zeros((), device=y.device)
    loss_sum = torch.zeros((), device=y.device)
    for i in range(0, len(y), EVAL_BATCH):
        xb, yb = x_u8[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
        with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(preprocess(xb, cfg, channels_last=channels_last))
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    acc, loss = (torch.stack([correct, loss_sum]) / max(1, len(y))).tolist()
    return acc, loss


def compile_stages(model) -> None:
    """torch.compile every stage's forward in place, with static shapes.

    Only the forwards are compiled: each stage module's __call__ stays eager, so the telemetry's
    forward hooks (which put a gradient hook on the stage output) run between compiled graphs
    exactly as without compile, and parameter names (checkpoints) do not change. All stages share
    one code object (Sequential.forward), so each gets its own recompile budget where torch can.
    """
    device = next(model.parameters()).device
    # Inductor builds C++ kernels on a CPU and Triton kernels on a GPU: say so in one line up
    # front rather than in a traceback at the first step.
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise ResdegError("--set compile=true on a CPU needs a C++ compiler (g++); install one or drop compile")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ResdegError("--set compile=true on a GPU needs the triton package; install it or drop compile")
    options = {"dynamic": False}
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        options["isolate_recompiles"] = True
    for _, stage in model.stages():
        stage.forward = torch.compile(stage.forward, **options)


@contextmanager
def numerics(cfg, device: torch.device):
    """The process-wide torch settings of a run, set in this one place and restored afterwards."""
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic = cfg.deterministic
    torch.backends.cudnn.benchmark = not cfg.deterministic
    # Without BatchNorm, activations and gradients drift into subnormal floats, which x86 CPUs
    # handle in microcode: flushing them to zero made smoke runs 3-7x faster. (torch cannot read
    # this flag back, so it is restored to the default, off.)
    flush = device.type == "cpu"
    if flush:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before
        if flush:
            torch.set_flush_denormal(False)


def _finite(v: float):
    return v if math.isfinite(v) else None


class Engine:
    """The computation of one run, with no files and no process-wide state: config, data and
    device in; the model, optimiser and subsets on the device; per epoch an `Epoch` record and
    the per-step telemetry out. `Trainer` puts it in a run folder; `resdeg bench` times it bare."""

    def __init__(self, cfg, data: Dataset, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        self.precision = resolve_precision(cfg, device)
        # channels_last pays on CPUs too (oneDNN's blocked kernels): ResNet-20 805 -> 1014 img/s here.
        self.channels_last = cfg.channels_last

        # Fixed subsets: the same images for every run and seed of a protocol.
        tr = fixed_subset(data.train_y, cfg.train_images, salt=1)
        te = test_subset(data, cfg)
        cl = tr[fixed_subset(data.train_y[tr], cfg.eval_train_images, salt=3)]
        to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        self.train_x, self.train_y = to(data.train_x[tr]), to(data.train_y[tr])
        self.test_x, self.test_y = to(data.test_x[te]), to(data.test_y[te])
        self.eval_train_x, self.eval_train_y = to(data.train_x[cl]), to(data.train_y[cl])
        check_batches(cfg, len(self.train_y))
        self.steps_per_epoch = steps_per_epoch(len(self.train_y), cfg.batch_size)

        with torch.random.fork_rng(devices=[]):  # seeded default initialisation; the global RNG is left as found
            torch.manual_seed(cfg.seed)
            self.model = model_from_config(cfg, data.num_classes).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_stages(self.model)
        extra = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0,
                                   **extra)
        self.telemetry = StageTelemetry(self.model, self.steps_per_epoch, device) if cfg.telemetry else None
        self.loss_buf = torch.zeros(self.steps_per_epoch, device=device)
        self.steps_done = 0  # steps of the last epoch: all of them, or up to the check that found a non-finite loss

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.model.stages()]

    def data_used(self) -> dict:
        return {**self.data.describe(), "train_used": len(self.train_y), "test_used": len(self.test_y),
                "eval_train_used": len(self.eval_train_y)}

    def train_step(self, x_u8: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                   lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a uint8 batch already on the device; returns (loss, logits), detached.
        Nothing here waits for the device: statistics stay in device tensors."""
        x = preprocess(x_u8, self.cfg, generator=generator, channels_last=self.channels_last)
        if lr is not None and lr != self.opt.param_groups[0]["lr"]:
            for group in self.opt.param_groups:
                group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.telemetry:
            self.telemetry.after_backward()
        self.opt.step()
        return loss.detach(), logits.detach()

    def train_epoch(self, epoch: int, bar: tqdm | None, check=None) -> tuple[float, float, float]:
        """(running train accuracy, mean train loss, last learning rate) of one epoch; one host sync.
        `check`, when given, is called before every step and may raise to stop the epoch."""
        cfg = self.cfg
        self.model.train()
        gen = epoch_generator(cfg.seed, epoch, self.device)
        perm = torch.randperm(len(self.train_y), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        perm = perm.to(self.device)
        correct = torch.zeros((), device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        lr = cfg.lr
        for i in range(self.steps_per_epoch):
            if check is not None:
                check()
            last = i + 1 == self.steps_per_epoch  # the last batch takes the rest (a single image merged in)
            idx = perm[i * cfg.batch_size:None if last else (i + 1) * cfg.batch_size]
            y = self.train_y[idx]
            lr = lr_at(cfg, epoch * self.steps_per_epoch + i, self.steps_per_epoch)
            loss, logits = self.train_step(self.train_x[idx], y, generator=gen, lr=lr)
            self.loss_buf[i] = loss
            loss_sum += loss * len(y)
            correct += (logits.argmax(1) == y).sum()
            if bar is not None:
                bar.update(1)
            self.steps_done = i + 1
            # A diverged run stops within DIVERGENCE_CHECK_STEPS steps instead of finishing the epoch (a
            # ResNet-56 without BatchNorm diverged at step 1 and then trained 12 minutes of NaNs): one
            # host sync per DIVERGENCE_CHECK_STEPS steps, never one per step.
            if self.steps_done % DIVERGENCE_CHECK_STEPS == 0 and not bool(torch.isfinite(loss_sum)):
                break
        acc, mean_loss = (torch.stack([correct, loss_sum]) / len(self.train_y)).tolist()  # the epoch's sync
        return acc, mean_loss, lr

    def take_steps(self, epoch: int) -> dict[str, np.ndarray]:
        """This epoch's per-step device buffers as host arrays (one transfer per epoch)."""
        n = self.steps_done
        arrays = {"loss": self.loss_buf[:n].to("cpu", copy=True).numpy(),
                  "step": np.arange(epoch * self.steps_per_epoch, epoch * self.steps_per_epoch + n, dtype=np.int64),
                  "epoch": np.full(n, epoch + 1, dtype=np.int32)}
        if self.telemetry:
            arrays.update(self.telemetry.take_epoch())
        return arrays

    def run_epoch(self, epoch: int, bar: tqdm | None = None, check=None) -> tuple[Epoch, dict[str, np.ndarray]]:
        """Train one epoch, then score the eval-mode train subset and the test set in eval mode."""
        t0 = time.perf_counter()
        train_acc, train_loss, lr = self.train_epoch(epoch, bar, check)
        steps = self.take_steps(epoch)
        eval_train_acc, _ = evaluate(self.model, self.eval_train_x, self.eval_train_y, self.cfg, self.precision,
                                     self.channels_last)
        test_acc, test_loss = evaluate(self.model, self.test_x, self.test_y, self.cfg, self.precision,
                                       self.channels_last)
        record = Epoch(epoch=epoch + 1, train_loss=_finite(train_loss), train_acc=train_acc,
                       eval_train_acc=eval_train_acc, test_loss=_finite(test_loss), test_acc=test_acc, lr=lr,
                       wall_s=round(time.perf_counter() - t0, 3), steps=self.steps_per_epoch)
        return record, steps

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])

    def close(self) -> None:
        if self.telemetry:
            self.telemetry.remove()


def first_nonfinite_step(steps: dict[str, list[np.ndarray]]) -> int | None:
    """The first step whose loss is not finite, or None."""
    if not steps["loss"]:
        return None
    losses = np.concatenate(steps["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(np.concatenate(steps["step"])[bad[0]]) if len(bad) else None


class Trainer:
    """The run-folder layer around an `Engine`: resume from the checkpoint, train the remaining
    epochs with a checkpoint per epoch, and keep run.json and the telemetry file up to date."""

    def __init__(self, cfg, data: Dataset, folder: Path, device: torch.device, progress: bool = True,
                 lock=None, after_epoch=None):
        """`lock`: the run lock (locks.RunLock) this process trains under: asked at every step
        whether it was lost, and checked against the lock file before every write. `after_epoch(epoch,
        model)`: called after each epoch is scored, before its checkpoint (the measurements during
        training: probes.probe.epoch_prober)."""
        self.cfg, self.folder, self.device, self.progress, self.lock = cfg, Path(folder), device, progress, lock
        self.after_epoch = after_epoch
        self.engine = Engine(cfg, data, device)
        self.history: list[Epoch] = []
        self.steps: dict[str, list[np.ndarray]] = {k: [] for k in TELEMETRY_ARRAYS}
        self.diverged_at: int | None = None
        self.created = now_iso()
        self.env = environment(device, self.engine.precision)

    # -- checkpoint -------------------------------------------------------------------------
    def _checkpoint_state(self) -> dict:
        return {"config_hash": self.cfg.hash, **self.engine.state(),
                "history": [e.to_dict() for e in self.history], "steps": self.steps, "created": self.created}

    def resume(self) -> bool:
        path = self.folder / CHECKPOINT_FILE
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            if state["config_hash"] != self.cfg.hash:
                raise ValueError("checkpoint belongs to another config")
            self.engine.load_state(state)
            history = [Epoch.from_dict(e) for e in state["history"]]
        except Exception as e:
            raise UnusableCheckpoint(f"{path}: unusable checkpoint ({e}); rerun with --force to start over") from None
        self.history, self.steps, self.created = history, state["steps"], state["created"]
        self.diverged_at = first_nonfinite_step(self.steps)
        return True

    # -- the run ----------------------------------------------------------------------------
    def record(self, status: str, telemetry: TelemetryEntry | None) -> RunRecord:
        last = self.history[-1] if self.history else None
        tests = [e.test_acc for e in self.history]
        return RunRecord(
            config=self.cfg, config_hash=self.cfg.hash, config_schema=CONFIG_SCHEMA, environment=self.env,
            data=self.engine.data_used(), status=status, epochs_done=len(self.history), epochs=tuple(self.history),
            diverged_at_step=self.diverged_at,
            summary=Summary(train_acc=last and last.train_acc, eval_train_acc=last and last.eval_train_acc,
                            test_acc=last and last.test_acc, test_loss=last and last.test_loss,
                            best_test_acc=max(tests) if tests else None,
                            parameters=sum(p.numel() for p in self.engine.model.parameters()),
                            steps_per_epoch=self.engine.steps_per_epoch,
                            wall_s=round(sum(e.wall_s for e in self.history), 3)),
            telemetry=telemetry, created=self.created,
            updated=now_iso())

    def _before_write(self) -> None:
        if self.lock is not None:
            self.lock.verify()

    def _during_epoch(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def save(self, status: str) -> RunRecord:
        self._before_write()
        tel = None
        if self.cfg.telemetry and self.history:
            tel = write_telemetry(self.folder, self.engine.stage_names,
                                  {k: np.concatenate(v) for k, v in self.steps.items()})
        run = self.record(status, tel)
        write_run(self.folder, run)
        return run

    def run(self, deadline: float | None = None) -> RunRecord:
        """Train the remaining epochs. Stops early (status partial, resumable) when the next
        epoch would end after `deadline` (a time.time() value)."""
        with numerics(self.cfg, self.device):
            return self._run(deadline)

    def _run(self, deadline: float | None) -> RunRecord:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.resume()
        if self.diverged_at is not None:  # killed between its checkpoint and its last write
            return self._finish("diverged")
        run = self.save("partial")
        cfg, epoch_s = self.cfg, None
        for epoch in range(len(self.history), cfg.epochs):
            if deadline is not None and epoch_s is not None and time.time() + epoch_s > deadline:
                break
            bar = tqdm(total=self.engine.steps_per_epoch, desc=f"{cfg.model} {cfg.variant} s{cfg.seed} "
                       f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
                       disable=None if self.progress else True)
            record, steps = self.train_epoch(epoch, bar)
            bar.close()
            epoch_s = record.wall_s
            self.history.append(record)
            if self.progress and not sys.stderr.isatty():  # no bar in a log file: one line per epoch instead
                print(epoch_line(cfg, self.history), file=sys.stderr, flush=True)
            for k, v in steps.items():
                self.steps[k].append(v)
            self.diverged_at = first_nonfinite_step(self.steps)
            if self.after_epoch is not None and self.diverged_at is None:
                self._before_write()
                self.after_epoch(len(self.history), self.engine.model)
            # Checkpoint first: run.json and telemetry are always rebuilt from it on resume.
            self._before_write()
            atomic_torch_save(self._checkpoint_state(), self.folder / CHECKPOINT_FILE)
            if self.diverged_at is not None:
                return self._finish("diverged")
            if epoch + 1 < cfg.epochs:
                run = self.save("partial")
        if len(self.history) == cfg.epochs:
            return self._finish("done")
        return run

    def train_epoch(self, epoch: int, bar: tqdm | None) -> tuple[Epoch, dict[str, np.ndarray]]:
        """One epoch of the engine (a seam for tests that interrupt a run between epochs)."""
        return self.engine.run_epoch(epoch, bar, check=self._during_epoch)

    def _finish(self, status: str) -> RunRecord:
        # Weights before the record that says "done": a failure in between leaves a partial run
        # with its checkpoint, which the next command finishes, never a done run without weights.
        self._before_write()
        if status == "done":
            write_weights(self.folder, self.cfg.hash, self.engine.model.state_dict())
        run = self.save(status)
        (self.folder / CHECKPOINT_FILE).unlink(missing_ok=True)
        self.engine.close()
        return run


def epoch_line(cfg, history: list[Epoch]) -> str:
    """The log line of the last epoch of `history`, with the time left at the mean pace of the
    last three epochs: what a background run (`nohup resdeg run-all ... > log`) prints."""
    last, left = history[-1], cfg.epochs - len(history)
    pace = sum(e.wall_s for e in history[-3:]) / len(history[-3:])
    loss = "nan" if last.train_loss is None else f"{last.train_loss:.3f}"
    eta = f"; {left} left, about {duration(left * pace)}" if left else ""
    return (f"{cfg.model} {cfg.variant} s{cfg.seed} epoch {len(history)}/{cfg.epochs}: loss {loss}, "
            f"train {100 * last.train_acc:.1f}%, test {100 * last.test_acc:.1f}% in {duration(last.wall_s)}{eta}")


def duration(seconds: float) -> str:
    """A time span as a person reads it: '78 s', '5 min', '1 h 20 min' (log lines, bench projections)."""
    minutes = round(seconds / 60)
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
