"""Benchmark of `resdeg probe`'s work for one run: feature extraction, every criterion at every
stage, and (optionally) signal propagation, timed separately.

The model is an untrained (randomly initialised) net of the given protocol, and the images are
the synthetic data set upscaled by the protocol's own preprocessing: timings do not depend on
what the weights have learnt (the criteria's cost depends on n and the feature sizes only), so
random weights and synthetic images are fine for timing. The numbers are not evidence.

    python scripts/bench_probe.py --out /tmp/bench.json                 # ResNet50, `seed` protocol, 500 images
    python scripts/bench_probe.py --signal --signal-batch 32 --out ...  # also the signal pass
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from resdeg.config import make_config
from resdeg.data import synthetic_dataset
from resdeg.probes.features import initial_model, prepare_cpu, probe_images, signal_propagation, stage_features
from resdeg.probes.probe import score_stage
from resdeg.probes.store import ProbeSettings
from resdeg.train import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--variant", default="FULL")
    ap.add_argument("--protocol", default="seed")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice]")
    ap.add_argument("--signal", action="store_true", help="also time the signal pass (init and trained nets)")
    ap.add_argument("--signal-batch", type=int, default=None,
                    help="batch of the signal pass [default: the protocol's batch_size; memory grows with it]")
    ap.add_argument("--plain-malloc", action="store_true",
                    help="leave glibc's allocator as it is (to measure what prepare_cpu's reuse saves)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        prepare_cpu(reuse_memory=not args.plain_malloc)  # as `resdeg probe` does
    over = {"test_images": 0} | ({"batch_size": args.signal_batch} if args.signal_batch else {})
    cfg = make_config(args.protocol, over, model=args.model, variant=args.variant, dataset="synthetic")
    data = synthetic_dataset(n_train=10, n_test=args.images)
    x_u8, y = probe_images(data, cfg, args.images)
    settings = ProbeSettings(probe_images=args.images)
    model = initial_model(cfg, data.num_classes).to(device)
    labels = y.to(device)

    load_before = _load()
    feature_s, criteria_s, per_criterion, stages = {}, {}, {}, {}
    cpu_s = {"features": 0.0, "criteria": 0.0}  # process CPU time, all threads: robust to a busy machine
    t_all = time.perf_counter()
    t, c = time.perf_counter(), time.process_time()
    for name, feats in stage_features(model, x_u8, cfg, device):
        feature_s[name] = time.perf_counter() - t  # this stage's forward over all images
        cpu_s["features"] += time.process_time() - c
        stages[name] = list(feats.shape[1:])
        timings: dict[str, float] = {}
        t, c = time.perf_counter(), time.process_time()
        _, errors = score_stage(feats, labels, settings, timings)
        criteria_s[name] = time.perf_counter() - t
        cpu_s["criteria"] += time.process_time() - c
        per_criterion[name] = timings
        if errors:
            print(f"{name}: undefined criteria {errors}")
        del feats
        t, c = time.perf_counter(), time.process_time()
    total_s = time.perf_counter() - t_all
    signal_s = None
    if args.signal:
        t = time.perf_counter()
        signal_propagation(model, x_u8, y, cfg, device)  # init and trained nets cost the same: time one
        signal_s = 2 * (time.perf_counter() - t)

    names = list(settings.criteria)
    header = ["stage", "shape", "features s", "criteria s"] + names
    rows = [[s, "x".join(map(str, stages[s])), f"{feature_s[s]:.2f}", f"{criteria_s[s]:.2f}"]
            + [f"{per_criterion[s].get(n, 0):.2f}" for n in names] for s in stages]
    rows.append(["all", "", f"{sum(feature_s.values()):.2f}", f"{sum(criteria_s.values()):.2f}"]
                + [f"{sum(per_criterion[s].get(n, 0) for s in stages):.2f}" for n in names])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(f"features + criteria, all stages: {total_s:.1f} s wall"
          + (f"; signal pass (init + trained, x2 of one): {signal_s:.1f} s" if signal_s is not None else ""))
    load = [load_before, _load()]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"CPU time (all threads): features {cpu_s['features']:.0f} s, criteria {cpu_s['criteria']:.0f} s")
    print(f"process CPU time: user {usage.ru_utime:.0f} s, system {usage.ru_stime:.0f} s; "
          f"{usage.ru_minflt} page faults; load average before/after {load}")
    result = {"model": cfg.model, "variant": cfg.variant, "protocol": cfg.protocol, "image_size": cfg.image_size,
              "images": args.images, "weights": "random (untrained)", "data": "synthetic",
              "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average": load, "malloc_reuse": not args.plain_malloc,
              "process_cpu_s": {"user": usage.ru_utime, "system": usage.ru_stime},
              "page_faults": usage.ru_minflt, "max_rss_gib": usage.ru_maxrss / 2**20,
              "stage_shapes": stages, "feature_s": feature_s, "criteria_s": criteria_s,
              "per_criterion_s": per_criterion, "cpu_s": cpu_s, "features_and_criteria_s": total_s,
              "signal_s": signal_s, "signal_batch": cfg.batch_size if args.signal else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def _load() -> str | None:
    """The 1-minute load average: how busy the shared machine was."""
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return None


if __name__ == "__main__":
    main()
