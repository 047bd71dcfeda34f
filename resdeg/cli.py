"""The `resdeg` command line: a thin layer over config, runner and store."""
from __future__ import annotations

import json
import sys
import time

import click

from .config import PROTOCOLS, make_config, parse_overrides
from .errors import ResdegError
from .models import ARCHS, VARIANTS

STUDY_MODELS = ("resnet18", "resnet50")


class Group(click.Group):
    """Turns a user mistake (ResdegError) into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ResdegError as e:
            click.echo(f"resdeg: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("resdeg: interrupted; run the same command again to resume", err=True)
            sys.exit(130)


def _csv(ctx, param, value):
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def common_options(f):
    """Options shared by every command that selects runs."""
    options = [
        click.option("--protocol", default="seed", show_default=True,
                     help=f"Named frozen config: {', '.join(PROTOCOLS)} (seed = the original study)."),
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
                     help="auto = bf16 autocast on CUDA, fp32 on CPU."),
        click.option("--dry-run", is_flag=True, help="Print the planned runs and which are cached; train nothing."),
        click.option("--force", is_flag=True, help="Redo runs even if cached (also corrupt ones)."),
        click.option("--time-limit", type=float, default=None, metavar="MINUTES",
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


def _configs(protocol, dataset, overrides, precision, models, variants, seeds):
    over = parse_overrides(overrides)
    if precision:
        over["precision"] = precision
    return [make_config(protocol, over, model=m, variant=v, seed=s, dataset=dataset)
            for m in models for v in variants for s in seeds]


def _train(configs, results, data_dir, device, dry_run, force, time_limit, quiet):
    from . import runner
    from .store import ensure_writable

    planned = runner.plan(configs, results, force=force)
    if dry_run:
        for p in planned:
            note = f"  ({p.problem})" if p.problem else ""
            click.echo(f"{p.state:<9} {p.cfg.protocol}/{p.cfg.dataset}/{p.cfg.run_name}{note}")
        todo = sum(p.todo for p in planned)
        click.echo(f"{todo} to train, {len(planned) - todo} cached or skipped")
        return
    from .train import resolve_device

    dev = resolve_device(device)
    ensure_writable(results)
    deadline = time.time() + 60 * time_limit if time_limit else None
    for p in planned:
        if not p.todo:
            click.echo(f"{p.state:<9} {p.cfg.run_name} (cached{': ' + p.problem if p.problem else ''})", err=True)
    runner.execute(planned, dev, data_dir=data_dir, force=force, deadline=deadline, progress=not quiet,
                   log=lambda m: click.echo(m, err=True))
    runner.check_corrupt(planned)


@main.command()
@common_options
@train_options
@click.option("--model", default="resnet18", show_default=True, help=f"One of {', '.join(ARCHS)}.")
@click.option("--variant", default="FULL", show_default=True, help=f"One of {', '.join(VARIANTS)} (any case).")
@click.option("--seed", type=int, default=None, help="Random seed [default: the protocol's, 42].")
def run(protocol, dataset, data_dir, results, overrides, device, precision, dry_run, force, time_limit, quiet,
        model, variant, seed):
    """Train one model/variant/seed (cached: a finished run is not redone)."""
    cfgs = _configs(protocol, dataset, overrides, precision, [model], [variant], [seed])
    _train(cfgs, results, data_dir, device, dry_run, force, time_limit, quiet)


@main.command("run-all")
@common_options
@train_options
@click.option("--models", callback=_csv, default=",".join(STUDY_MODELS), show_default=True,
              help="Comma-separated models.")
@click.option("--variants", callback=_csv, default=",".join(VARIANTS), show_default=True,
              help="Comma-separated variants.")
@click.option("--seeds", callback=_csv, default=None, help="Comma-separated seeds [default: 42].")
def run_all(protocol, dataset, data_dir, results, overrides, device, precision, dry_run, force, time_limit,
            quiet, models, variants, seeds):
    """Train the grid models x variants x seeds (cached and resumable)."""
    try:
        seed_list = [int(s) for s in seeds] if seeds else [None]
    except ValueError:
        raise ResdegError(f"--seeds {','.join(seeds)!r}: expected comma-separated integers") from None
    cfgs = _configs(protocol, dataset, overrides, precision, models, variants, seed_list)
    _train(cfgs, results, data_dir, device, dry_run, force, time_limit, quiet)


@main.command()
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per run.")
def status(results, as_json):
    """Every run in the result store: done / diverged / partial / corrupt."""
    from .store import scan

    rows = [e.row() for e in scan(results)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo(f"no runs in {results}/")
        return
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    header = ("protocol", "dataset", "model", "variant", "seed", "status", "epochs", "train%", "test%")
    table = [header] + [(r["protocol"], r["dataset"], r["model"] or "?", r["variant"] or "?", str(r["seed"]),
                         r["status"], f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else "",
                         pct(r["clean_train_acc"]), pct(r["test_acc"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in rows:
        if r["problem"]:
            click.echo(f"corrupt: {r['path']}: {r['problem']}", err=True)


if __name__ == "__main__":
    main()
