"""The `resdeg` command line: a thin layer over config, runner and store.

This module imports no torch: each command imports the modules that do (torch takes seconds to
load) when it runs, so that `resdeg --help` and a mistyped option answer at once."""
from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path

import click

from .config import PROTOCOL_ALIASES, PROTOCOLS, SEED_MAX, canonical_protocol, make_config, parse_overrides
from .errors import ResdegError
from .signals import Stopped, stop_signals
from .study import ARCHS, ORIGINAL_MODELS, VARIANTS, default_cells, default_grid, measures_optimisation

# OSErrors that are the machine's state, not a bug: one line naming the path and what to do
_DISK_ERRORS = {
    errno.ENOSPC: "no space left on device while writing {path}; free some space (or choose another folder) and "
                  "run the same command again: files already written are intact, an unfinished run resumes",
    errno.EDQUOT: "disk quota exceeded while writing {path}; free some space (or choose another folder) and "
                  "run the same command again: files already written are intact, an unfinished run resumes",
    errno.EROFS: "{path} is on a read-only file system; choose a writable folder (e.g. another --results)",
    errno.EACCES: "permission denied: {path}; fix its permissions or choose another folder (e.g. another --results)",
    errno.EPERM: "operation not permitted: {path}; fix its permissions or choose another folder",
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Group(click.Group):
    """Turns a user mistake (ResdegError), a usage error, or a full / read-only / forbidden disk
    (OSError ENOSPC, EDQUOT, EROFS, EACCES, EPERM) into one line on stderr and a non-zero exit
    code (1; 2 for usage errors, as click has it). Any other exception is a bug: its traceback shows."""

    def invoke(self, ctx):
        try:
            with stop_signals():  # SIGTERM, SIGHUP: stop as Ctrl-C does (runs resumable, workers ended)
                return super().invoke(ctx)
        except ResdegError as e:
            _fail(str(e), 1)
        except click.UsageError as e:
            sub = e.ctx.command_path if e.ctx is not None else ctx.command_path
            _fail(f"{e.format_message()} (see `{sub} --help`)", e.exit_code)
        except OSError as e:
            if e.errno not in _DISK_ERRORS:
                raise
            path = e.filename2 if e.filename2 is not None else e.filename
            _fail(_DISK_ERRORS[e.errno].format(path=path if path is not None else "a file"), 1)
        except Stopped as e:
            click.echo(f"resdeg: stopped by {e.name}; run the same command again to resume", err=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:
            click.echo("resdeg: interrupted; run the same command again to resume", err=True)
            sys.exit(130)


def _fail(message: str, code: int):
    click.echo(f"resdeg: error: {_one_line(message)}", err=True)
    sys.exit(code)


def _csv(ctx, param, value):
    """A comma-separated option (--models, --variants, --seeds) -> its items, stripped of spaces.

    An empty item ("a,,b", a trailing comma, or an empty value) is an error: it is most often a
    value lost while editing the command, and an empty list must not quietly mean "the defaults".
    A repeated item (also after normalising: "42,042", "full,FULL") is kept once, with a note on
    stderr: the same run cannot be trained twice into one folder, and dropping the repeat cannot
    change a result. Seeds must be integers in 0 .. 2**32 - 1 (what the trainer can seed) and
    are returned as ints.
    """
    if value is None:
        return None
    opt = f"--{param.name}"
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise ResdegError(f"{opt} {value[:80]!r}: {'no items' if not value.strip() else 'an empty item'}; give "
                          f"comma-separated values without empty ones, or leave {opt} out for the defaults")
    if param.name == "seeds":
        try:
            items = [int(v) for v in items]
        except ValueError:
            raise ResdegError(f"--seeds {value[:80]!r}: expected comma-separated integers") from None
        bad = next((s for s in items if not 0 <= s <= SEED_MAX), None)
        if bad is not None:
            raise ResdegError(f"--seeds: {str(bad)[:30]} is out of range: seeds must be between 0 and {SEED_MAX}")
        key = lambda v: v  # noqa: E731
    else:
        key = str.lower  # models and variants are matched in any case
    out, seen, repeated = [], set(), []
    for v in items:
        if key(v) in seen:
            repeated.append(str(v))
        else:
            seen.add(key(v))
            out.append(v)
    if repeated:
        click.echo(f"resdeg: note: {opt} lists {', '.join(dict.fromkeys(repeated))} more than once; "
                   f"using each once", err=True)
    return out


def _minutes(ctx, param, value):
    """--time-limit: a positive, finite number of minutes (nan or inf would silently mean no limit)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ResdegError(f"--time-limit {value}: must be a positive, finite number of minutes")
    return value


def _protocol(ctx, param, value):
    """--protocol: the declared name (a former one, `seed`, is accepted); a one-line error if unknown."""
    return None if value is None else canonical_protocol(value.strip())


PROTOCOL_HELP = (f"Named frozen config: {', '.join(PROTOCOLS)} (original = the note's study; "
                 f"{', '.join(PROTOCOL_ALIASES)} is accepted for it, its former name).")


def common_options(f):
    """Options shared by every command that selects runs."""
    options = [
        click.option("--protocol", default="original", show_default=True, callback=_protocol, help=PROTOCOL_HELP),
        click.option("--dataset", default=None,
                     help="cifar10 | cifar100 | imagefolder | synthetic  [default: cifar10]"),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Data root: a torchvision CIFAR folder, or for imagefolder a folder with train/ and test/."),
        click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
                     help="Result store folder."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any protocol field, e.g. --set epochs=5 --set lr=0.05 (validated)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def train_options(f):
    options = [
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where to train."),
        click.option("--precision", default=None, type=click.Choice(["auto", "bf16", "fp32"]),
                     help="[default: the protocol's: fp32 for original/native; auto for the others = bf16 autocast on "
                          "CUDA and on CPUs with native bf16, else fp32]."),
        click.option("--dry-run", is_flag=True, help="Print the planned runs and which are cached; train nothing."),
        click.option("--force", is_flag=True, help="Redo runs even if cached (also corrupt ones)."),
        click.option("--time-limit", type=float, default=None, metavar="MINUTES", callback=_minutes,
                     help="Stop cleanly (resumable) before an epoch that would end past this limit."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="resdeg")
def main():
    """resdeg: why do deep networks degrade without residual connections, and what do
    residual connections and BatchNorm each do?

    Trains ResNets in four variants (FULL, Nres: no residual connections, Nbn: no
    BatchNorm, Nboth: neither), records accuracy and per-step gradient telemetry, and
    caches every run under --results so that any command can be stopped and rerun.

    \b
      resdeg run-all --protocol smoke --dataset synthetic   # minutes on a CPU
      resdeg run-all                                        # the original study (GPU)
      resdeg status
    """


def _configs(protocol, dataset, overrides, precision, cells, seeds, device="auto"):
    """One config per (model, variant) cell and seed."""
    from .train import resolve_device  # torch: loaded when a command runs, not for --help

    over = parse_overrides(overrides)
    if precision:
        over["precision"] = precision
    device_type = resolve_device(device).type
    return [make_config(protocol, over, device_type=device_type, model=m, variant=v, seed=s, dataset=dataset)
            for m, v in cells for s in seeds]


def _train(configs, results, data_dir, device, dry_run, force, time_limit, quiet, probe_settings=None,
           executor=None, optim_settings=None):
    from . import runner  # torch: loaded when a command runs, not for --help

    planned = runner.plan(configs, results, force=force)
    if dry_run:
        for p in planned:
            note = f"  ({p.problem})" if p.problem else ""
            click.echo(f"{p.state:<9} {p.cfg.store_protocol}/{p.cfg.dataset}/{p.cfg.run_name}{note}")  # its folder
        todo = sum(p.todo for p in planned)
        click.echo(f"{todo} to train, {len(planned) - todo} cached or skipped")
        return
    runner.train_and_probe(planned, device, results, data_dir=data_dir, force=force, time_limit=time_limit,
                           probe_settings=probe_settings, progress=not quiet, log=lambda m: click.echo(m, err=True),
                           executor=executor, optim_settings=optim_settings)


@main.command()
@common_options
@train_options
@click.option("--model", default="resnet18", show_default=True, help=f"One of {', '.join(ARCHS)}.")
@click.option("--variant", default="FULL", show_default=True, help=f"One of {', '.join(VARIANTS)} (any case).")
@click.option("--seed", type=int, default=None, help="Random seed [default: the protocol's, 42].")
def run(protocol, dataset, data_dir, results, overrides, device, precision, dry_run, force, time_limit, quiet,
        model, variant, seed):
    """Train one model/variant/seed (cached: a finished run is not redone)."""
    cfgs = _configs(protocol, dataset, overrides, precision, [(model, variant)], [seed], device)
    _train(cfgs, results, data_dir, device, dry_run, force, time_limit, quiet)


@main.command("run-all")
@common_options
@train_options
@click.option("--models", callback=_csv, default=None,
              help="Comma-separated models [default: every study declared for the protocol "
                   "(resdeg/study.py): resnet18,resnet50; depth: resnet20,resnet32,resnet44,resnet56].")
@click.option("--variants", callback=_csv, default=None,
              help="Comma-separated variants [default: the protocol's studies: FULL,Nres,Nbn,Nboth; "
                   "depth: FULL,Nres,Nbn,Fixup,SkipInit,Nboth].")
@click.option("--seeds", callback=_csv, default=None, help="Comma-separated seeds [default: the study's, 42].")
@click.option("--probe-images", type=int, default=500, show_default=True,
              help="Probe every finished run on N test images: a fixed, class-balanced subset, the same "
                   "for every run of a data set (see `resdeg probe`).")
@click.option("--no-probe", is_flag=True, help="Train only; probe later with `resdeg probe`.")
@click.option("--optim/--no-optim", "optim_while_training", default=None,
              help="Measure H4 and H5 (`resdeg optim`'s default settings) after the first epoch, at each "
                   "learning-rate drop and at the end of every run [default: on for the protocols of the depth "
                   "study unless --no-probe, off elsewhere; on 2 CPU cores each measurement adds about 1 min to a "
                   "ResNet-20 run, 4-5 min to a ResNet-56].")
@click.option("--no-report", is_flag=True,
              help="Do not render the report at the end: of every study in --results, as `resdeg report` does.")
@click.option("--docs", default="docs", show_default=True, type=click.Path(file_okay=False), envvar="RESDEG_DOCS",
              help="Where the report's pages go (or $RESDEG_DOCS).")
@click.option("--jobs", type=int, default=1, show_default=True, metavar="N",
              help="Train N runs at once, each in its own process (CPU threads split between them; "
                   "on one GPU they share it).")
@click.option("--launcher", default="local", show_default=True, metavar="local|slurm|submitit-local",
              help="Where runs train: here; or each run as a Slurm job through submitit (the store must be on a "
                   "file system the nodes share); submitit-local: the same jobs as processes of this machine.")
@click.option("--partition", default=None, help="Slurm partition [default: the cluster's].")
@click.option("--gpus-per-run", type=int, default=None, metavar="N",
              help="GPUs per Slurm job [default: 0, CPU runs]. Runs are configured for the device they get.")
@click.option("--time", "slurm_time", default=None, metavar="TIME",
              help="Slurm time limit per run (MINUTES or D-H:MM:SS) [default: 4:00:00]; a run stops cleanly "
                   "before it and resumes when submitted again.")
@click.option("--slurm-extra", multiple=True, metavar="KEY=VALUE",
              help="Any other sbatch option, repeatable: --slurm-extra account=abc --slurm-extra cpus-per-task=8.")
@click.option("--wait", is_flag=True,
              help="With --launcher slurm: wait for the jobs (progress from the store), then probe and report. "
                   "Without it the job ids are printed and `resdeg status` follows them.")
def run_all(protocol, dataset, data_dir, results, overrides, device, precision, dry_run, force, time_limit,
            quiet, models, variants, seeds, probe_images, no_probe, optim_while_training, no_report, docs, jobs,
            launcher, partition, gpus_per_run, slurm_time, slurm_extra, wait):
    """Train the grid models x variants x seeds (cached and resumable), then probe every finished
    run (cached too: a run with a probe for these settings is not probed again). A run being trained
    by another process (this machine or another sharing the store) is skipped; see `resdeg status`."""
    # torch: loaded when the command runs, not for --help
    from .launch import DEFAULT_TIME, SubmititLauncher, check_launcher, parse_extra, submit_grid
    from .probes.optim_store import OptimSettings
    from .probes.store import ProbeSettings
    from .runner import ProcessPool, plan

    cluster = check_launcher(launcher) != "local"
    if cluster and jobs != 1:
        raise ResdegError("--jobs is for the local launcher; with --launcher slurm every run is a job of its own")
    if cluster and time_limit is not None:
        raise ResdegError("--time-limit is for local runs; with --launcher slurm, --time limits each job "
                          "(its run stops cleanly before it)")
    given = [o for o, v in (("--partition", partition), ("--gpus-per-run", gpus_per_run), ("--time", slurm_time),
                            ("--slurm-extra", slurm_extra), ("--wait", wait)) if v]
    if given and not cluster:
        raise ResdegError(f"{given[0]} goes with --launcher slurm")

    seed_list = seeds or [None]  # integers already (_csv)
    if models or variants:  # the grid asked for, with the protocol's defaults for what is not given
        grid_models, grid_variants = default_grid(protocol)
        cells = [(m, v) for m in (models or grid_models) for v in (variants or grid_variants)]
    else:
        cells = default_cells(protocol)
    if cluster:
        executor = SubmititLauncher(results, cluster="local" if launcher == "submitit-local" else "slurm",
                                    partition=partition, gpus_per_run=gpus_per_run or 0,
                                    time=slurm_time or DEFAULT_TIME, extra=parse_extra(slurm_extra))
        if not dry_run:
            executor.check_available()  # before anything is planned or written
        over = parse_overrides(overrides) | ({"precision": precision} if precision else {})
        # configured (precision resolved) for the device of the nodes: a GPU when --gpus-per-run > 0
        cfgs = [make_config(protocol, over, device_type="cuda" if gpus_per_run else "cpu", model=m, variant=v, seed=s,
                            dataset=dataset) for m, v in cells for s in seed_list]
    else:
        executor = ProcessPool(jobs) if jobs != 1 else None
        cfgs = _configs(protocol, dataset, overrides, precision, cells, seed_list, device)
    settings = None if no_probe else ProbeSettings(probe_images=probe_images)
    if optim_while_training is None:
        optim_while_training = measures_optimisation(protocol) and not no_probe  # --no-probe: train only
    optim_settings = None
    if optim_while_training:
        optim_settings = OptimSettings()
    if cluster and not (wait or dry_run):  # submit, print the job ids, return: `resdeg status` follows them
        submit_grid(cfgs, results, executor, data_dir, force, out=click.echo, log=lambda m: click.echo(m, err=True))
        return
    _train(cfgs, results, data_dir, device, dry_run, force, time_limit, quiet, probe_settings=settings,
           executor=executor, optim_settings=optim_settings)
    if dry_run and cluster:
        click.echo(f"sbatch parameters (one job per run{', as one array' if len(cfgs) > 1 else ''}):")
        click.echo(executor.preview(max(1, sum(p.todo for p in plan(cfgs, results, force=force)))))
    if not (dry_run or no_report):
        # the whole store, not only this grid's protocol: a report of one protocol would drop every
        # other study's pages from docs/ (smoke runs beside real studies stay off the pages)
        _report(results, docs, None, None)


def _report(results, docs, protocol, dataset):
    from .report import build_report  # torch, matplotlib, jinja2: loaded when a command runs, not for --help

    build_report(results, docs, protocol, dataset, log=lambda m: click.echo(m, err=True))


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Result store folder (read only).")
@click.option("--docs", default="docs", show_default=True, type=click.Path(file_okay=False), envvar="RESDEG_DOCS",
              help="MkDocs docs folder (or $RESDEG_DOCS): docs/en, docs/zh and docs/downloads are regenerated whole.")
@click.option("--protocol", default=None, callback=_protocol,
              help="Report only this protocol's runs [default: every study with results; smoke only when no "
                   "other study has any].")
@click.option("--dataset", default=None, help="Report runs on this data set [default: the one with most runs].")
def report(results, docs, protocol, dataset):
    """Render the report from cached results alone (no training): figures with English and
    Chinese labels, the data behind them (CSV/JSON), and bilingual pages with computed verdicts.
    Then build the site with `mkdocs build --strict` (output in site/).
    """
    _report(results, docs, protocol, dataset)


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Result store folder (read only).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per run.")
def status(results, as_json):
    """Every run in the result store: done / diverged / partial / corrupt."""
    # torch: loaded when the command runs, not for --help
    from .launch import annotate_status
    from .probes.optim_store import measurement_summary
    from .probes.store import status_rows

    # each run in the store, and what the launchers know: runs submitted to a cluster, runs training right now
    rows = annotate_status(results, status_rows(results))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo(f"no runs in {results}/")
    _status_table(rows)
    for m in measurement_summary(results):  # `resdeg optim`: nets measured at initialisation or trained
        skipped = f", {m['skipped']} skipped" if m["skipped"] else ""
        corrupt = f", {len(m['corrupt'])} corrupt" if m["corrupt"] else ""
        click.echo(f"optim ({m['phase']}): {m['where']}/: {m['done']} measured{skipped}{corrupt}")
        for problem in m["corrupt"]:
            click.echo(f"corrupt optim record: {m['where']}/{problem}", err=True)


def _status_table(rows: list[dict]) -> None:
    if not rows:
        return
    from .train import duration  # torch: loaded when a command runs, not for --help

    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    # running = train mode over the epoch's batches (the original's measure); eval-train = eval mode, after the epoch
    header = ("protocol", "dataset", "model", "variant", "seed", "status", "epochs", "running%", "eval-train%",
              "test%", "time", "probed")
    table = [header] + [(r["protocol"], r["dataset"], r["model"] or "?", r["variant"] or "?", str(r["seed"]),
                         r["status"] + (f" ({r['activity']})" if r.get("activity") else ""),
                         f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else "",
                         pct(r["train_acc"]), pct(r["eval_train_acc"]), pct(r["test_acc"]),
                         "" if r["wall_s"] is None else duration(r["wall_s"]), "yes" if r["probed"] else "no")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["problem"]:
            click.echo(f"{r['status']}: {r['path']}: {r['problem']}", err=True)
        if r["probe_problem"]:
            click.echo(f"corrupt probe: {r['path']}: {r['probe_problem']}", err=True)


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Result store folder.")
@click.option("--run", "run_folder", type=click.Path(file_okay=False), default=None,
              help="Probe this one run folder (an error if it is missing or unfinished).")
@click.option("--protocol", default=None, callback=_protocol, help="Only runs of this protocol [default: all].")
@click.option("--dataset", default=None, help="Only runs on this data set [default: all].")
@click.option("--models", callback=_csv, default=None, help="Only these models, comma-separated [default: all].")
@click.option("--variants", callback=_csv, default=None, help="Only these variants, comma-separated [default: all].")
@click.option("--seeds", callback=_csv, default=None, help="Only these seeds, comma-separated [default: all].")
@click.option("--probe-images", type=int, default=500, show_default=True,
              help="N test images: a fixed, class-balanced, seeded subset, the same for every run of a "
                   "data set, in each run's own preprocessing.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the runs' data set is (as for `resdeg run`); it must be the data they were trained on.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where to compute features and criteria.")
@click.option("--force", is_flag=True,
              help="Probe again even if a probe for these settings exists (also a corrupt one).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--phase", type=click.Choice(["trained", "init", "both"]), default="trained", show_default=True,
              help="trained: the finished runs' nets (their weights); init: the untrained net each run starts from "
                   "(its config and seed, no weights needed; into <protocol>/<dataset>/init/), H3's control; both.")
def probe(results, run_folder, protocol, dataset, models, variants, seeds, probe_images, data_dir, device, force,
          quiet, phase):
    """Probe every finished run that has no probe for these settings yet: how separable each
    stage's features are (Fisher ratios per image and per channel map, LDA, linear probe, kNN,
    NC1, silhouette, coding-rate reduction, CKA), and the mean/std of each stage's activations
    and gradients at initialisation and after training. Results go into the run's folder as
    probe-<settings hash>.json; a diverged run is recorded as skipped, with its reason.
    """
    # torch: loaded when the command runs, not for --help
    from .probes.probe import describe, finished_runs, probe_folders, probe_init_folders, probe_run, raise_failures
    from .probes.store import ProbeSettings
    from .train import resolve_device

    settings = ProbeSettings(probe_images=probe_images)
    dev = resolve_device(device)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if run_folder:
        folders, failures = [Path(run_folder)], []
    else:
        folders, failures = finished_runs(results, protocol, dataset, models, variants, seeds, log=log)
        if not folders and not failures:
            log(f"no finished runs to probe in {results}/")
    if phase in ("init", "both"):
        failures += probe_init_folders(folders, settings, dev, data_dir, force, progress=not quiet, log=log)
    if phase in ("trained", "both"):
        if run_folder:
            doc, state = probe_run(Path(run_folder), settings, dev, data_dir, force, progress=not quiet)
            log(describe(doc, state))
        else:
            failures += probe_folders(folders, settings, dev, data_dir, force, progress=not quiet, log=log)
    raise_failures(failures)


@main.command()
@click.option("--model", default="resnet18", show_default=True, help=f"One of {', '.join(ARCHS)}.")
@click.option("--variant", default="FULL", show_default=True, help=f"One of {', '.join(VARIANTS)}.")
@click.option("--protocol", default="original", show_default=True, callback=_protocol, help=PROTOCOL_HELP)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where to time the loops (auto: CUDA when available).")
@click.option("--batch-size", type=int, default=None,
              help="[default: the protocol's; 8 with --quick on a CPU]")
@click.option("--steps", type=int, default=None,
              help="Timed steps per repeat [default: 10 CPU / 50 GPU; --quick 3 / 10].")
@click.option("--warmup", type=int, default=None, help="Untimed steps first [default: 2 / 10; --quick 1 / 3].")
@click.option("--repeats", type=int, default=None, help="Timed repeats, the median counts [default: 3; --quick 1].")
@click.option("--projection-steps", type=int, default=None,
              help="Timed steps of each study model for the projection [default: 5 / 30; --quick 2 / 10].")
@click.option("--workers", type=int, default=None, help="DataLoader workers of the reference loop [default: 2].")
@click.option("--dataset", default="synthetic", show_default=True,
              help="Images to train on: synthetic, or cifar10 / cifar100 / imagefolder (with --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="As for `resdeg run`.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override protocol fields, e.g. --set deterministic=false.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the engine's stages (not the reference).")
@click.option("--quick", is_flag=True, help="Few small steps: a CPU run in under two minutes.")
@click.option("--projection/--no-projection", default=True, show_default=True,
              help="Also time every study model to project the original and cifar studies' wall time.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="JSON file [default: benchmarks/<device>-<model>-<protocol>-<time>.json].")
def bench(model, variant, protocol, device, batch_size, steps, warmup, repeats, projection_steps, workers, dataset,
          data_dir, overrides, compile_, quick, projection, out):
    """Time training steps of (a) resdeg's engine with telemetry, (b) without it, and (c) a
    reference loop written like the original study (CPU transforms in a DataLoader, fp32,
    an .item() hook every step), on the same model and images. Prints images/s, a/c, a/b,
    model FLOP utilisation on a GPU and the projected wall time of the original and cifar studies;
    writes the figures as JSON.
    """
    # torch: loaded when the command runs, not for --help
    from .bench import Settings, default_output, format_report, run_benchmark, write_bench
    from .train import resolve_device

    dev = resolve_device(device)
    settings = Settings.make(quick, dev, batch_size=batch_size, steps=steps, warmup=warmup, repeats=repeats,
                             projection_steps=projection_steps, workers=workers)
    doc = run_benchmark(model, variant, protocol, dev, settings, ORIGINAL_MODELS, dataset=dataset, data_dir=data_dir,
                        overrides=parse_overrides(overrides), compile=compile_, projection=projection,
                        log=lambda m: click.echo(m, err=True))
    click.echo(format_report(doc))
    path = write_bench(doc, out or default_output(doc))
    click.echo(f"wrote {path}")


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Result store folder: records go to <protocol>/<dataset>/init/ and into trained runs' folders.")
@click.option("--protocol", default="depth", show_default=True, callback=_protocol, help=PROTOCOL_HELP)
@click.option("--dataset", default=None, help="cifar10 | cifar100 | imagefolder | synthetic  [default: cifar10]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data root, as for `resdeg run` (trained runs: the data they were trained on).")
@click.option("--models", callback=_csv, default="resnet20,resnet32,resnet44,resnet56,resnet110", show_default=True,
              help="Comma-separated models (He et al.'s nets by default).")
@click.option("--variants", callback=_csv, default="FULL,Nres", show_default=True,
              help="Comma-separated variants (residual and plain by default).")
@click.option("--seeds", callback=_csv, default="42,43,44", show_default=True, help="Comma-separated seeds.")
@click.option("--phase", type=click.Choice(["init", "trained", "both"]), default="both", show_default=True,
              help="init: the grid's nets at initialisation (no training needed); trained: the grid's finished "
                   "runs that kept their weights (model.pt); both.")
@click.option("--gradient-images", type=int, default=64, show_default=True,
              help="Test images (class-balanced, fixed) whose input gradients are correlated along a random line.")
@click.option("--curvature-images", type=int, default=128, show_default=True,
              help="Training images (class-balanced, fixed) of the training loss whose Hessian and slices are taken.")
@click.option("--lanczos-steps", type=int, default=20, show_default=True,
              help="Hessian-vector products of the Lanczos run that gives the largest and most negative eigenvalue.")
@click.option("--slice-points", type=int, default=21, show_default=True,
              help="Points of the 1-D filter-normalised loss slice, from -1 to 1 (odd).")
@click.option("--slice-2d", type=int, default=0, show_default=True, metavar="N",
              help="Also an N x N 2-D slice on two filter-normalised directions (odd N; 0: none).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where to compute (always fp32).")
@click.option("--dry-run", is_flag=True, help="List the nets to measure and which are cached; measure nothing.")
@click.option("--force", is_flag=True,
              help="Measure again even if a record for these settings exists (also a corrupt one).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def optim(results, protocol, dataset, data_dir, models, variants, seeds, phase, gradient_images, curvature_images,
          lanczos_steps, slice_points, slice_2d, device, dry_run, force, quiet):
    """Measure what makes a net hard to optimise (hypotheses H4, H5) for a grid of nets: the
    correlation of input gradients at nearby inputs against their distance (shattered gradients,
    Balduzzi et al. 2017), the largest and most negative Hessian eigenvalue of the training loss
    and their ratio, and filter-normalised loss slices (Li et al. 2018). One record per net and
    settings, cached: a second call measures nothing new. Nets at initialisation go to
    <results>/<protocol>/<dataset>/init/, trained runs' into their folders.
    """
    # torch: loaded when the command runs, not for --help
    from .probes.optim_measure import run_optim
    from .probes.optim_store import OptimSettings
    from .train import resolve_device

    settings = OptimSettings(gradient_images=gradient_images, curvature_images=curvature_images,
                             lanczos_steps=lanczos_steps, slice_points=slice_points, slice_2d_points=slice_2d)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    failures = run_optim(results, protocol, dataset, data_dir, models, variants, seeds, settings,
                         resolve_device(device), ("init", "trained") if phase == "both" else (phase,), force=force,
                         dry_run=dry_run, progress=not quiet, log=log)
    if failures:
        raise ResdegError(f"{len(failures)} net(s) not measured (first: {failures[0]})")


if __name__ == "__main__":
    main()
