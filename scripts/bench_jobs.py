#!/usr/bin/env python3
"""Wall time of a grid trained with `run-all --jobs N` against `--jobs 1`, in the same run.

    python scripts/bench_jobs.py                                  # the smoke grid on generated data, jobs 1 vs 2
    python scripts/bench_jobs.py --jobs 1,2,4 -- --set epochs=1 --models resnet18 --variants FULL,Nres
    python scripts/bench_jobs.py --jobs 1,2,4 -- --protocol seed --dataset cifar10 --models resnet18 --device cuda

Arguments after `--` go to every `resdeg run-all` (default: --protocol smoke --dataset synthetic).
Each setting trains the whole grid into a fresh temporary store (--no-probe --no-report --quiet),
as a separate process, with `--repeats` rounds alternating the settings so that a change in the
machine's load hits every setting alike; the median wall time counts. Prints one line per
setting and the ratio to the first (`--jobs 1`): below 1 is a gain.

On 2 CPU cores expect little gain: --jobs 2 gives each run 1 torch thread instead of 2, so the
same arithmetic runs on the same cores; what it saves is the serial parts of a run (start-up,
evaluation, writing). On a CPU the numbers of a run depend on its thread count, so --jobs N trains
slightly different (equally valid) numbers than --jobs 1; on a GPU the processes share the card.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values, the first is the baseline [1,2]")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all settings; the median counts [1]")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = ap.parse_args(argv)
    jobs = [int(j) for j in args.jobs.split(",") if j.strip()]
    if not jobs or min(jobs) < 1 or args.repeats < 1:
        ap.error("--jobs takes positive integers, --repeats at least 1")
    if not any(a == "--protocol" for a in extra):
        extra = ["--protocol", "smoke", *extra]
    if not any(a == "--dataset" for a in extra):
        extra = ["--dataset", "synthetic", *extra]

    times: dict[int, list[float]] = {j: [] for j in jobs}
    for r in range(args.repeats):
        for j in jobs:
            with tempfile.TemporaryDirectory(prefix=f"bench-jobs{j}-") as tmp:
                cmd = [sys.executable, "-m", "resdeg.cli", "run-all", *extra, "--jobs", str(j), "--results",
                       os.path.join(tmp, "results"), "--no-probe", "--no-report", "--quiet"]
                t0 = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if res.returncode != 0:
                    print(f"--jobs {j} failed ({res.returncode}):\n{res.stderr.strip()}", file=sys.stderr)
                    return 1
                runs = res.stderr.count(": done") + res.stderr.count(": diverged")
                times[j].append(wall)
                print(f"round {r + 1}: --jobs {j}: {wall:7.1f}s wall ({runs} runs trained)", file=sys.stderr)

    base = statistics.median(times[jobs[0]])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"run-all {' '.join(extra)} on {cores} CPU cores, median of {args.repeats}:")
    figures = {}
    for j in jobs:
        med = statistics.median(times[j])
        figures[j] = {"wall_s": round(med, 2), "ratio": round(med / base, 3), "walls": [round(t, 2) for t in times[j]]}
        print(f"  --jobs {j}: {med:7.1f}s  ratio to --jobs {jobs[0]}: {med / base:.2f}")
    if args.json:
        print(json.dumps({"args": extra, "cores": cores, "jobs": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
