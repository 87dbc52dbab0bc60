"""The long fuzzing run: the targets of ``tests/fuzz`` with many more inputs than ``make test`` tries.

Runs pytest on ``tests/fuzz`` with ``--examples`` inputs per target (the over-the-wire targets, which
cost a request each, take a tenth of that) and prints, per target,
the inputs tried and whether it found a crash, then the totals.

    .venv/bin/python benchmarks/fuzz.py --examples 20000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000, help="inputs per parsing target")
    args = parser.parse_args()
    env = {**os.environ, "GODWIT_FUZZ_EXAMPLES": str(args.examples),
           "QT_QPA_PLATFORM": "offscreen"}
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0",
                          "--hypothesis-show-statistics", "tests/fuzz"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    elapsed = time.monotonic() - began
    tried = failed = 0
    for name, passing, failing in re.findall(r"test_fuzz\.py::(\w+):\n(?:.*\n)*?\s+- (\d+) passing, (\d+) failing",
                                             run.stdout):
        print(f"{name:60} {int(passing) + int(failing):>8} inputs, {failing} crashing")
        tried += int(passing) + int(failing)
        failed += int(failing)
    print(f"total: {tried} inputs in {elapsed:.0f} s, {failed} crashing; pytest exit code {run.returncode}")
    if run.returncode:
        print(run.stdout[-4000:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
