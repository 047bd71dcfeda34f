"""`python scripts/bench.py ARGS` = `resdeg bench ARGS`: the engine timed beside an original-style loop.

    python scripts/bench.py --quick                       # CPU: under two minutes
    python scripts/bench.py --model resnet50 --device cuda
"""
import sys

from resdeg.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
