"""The cost of checking a hostile Referer: a 1 KB and a 4 KB value, the old pattern and the check.

    python bench/referrer.py [--calls 20]

Issue 10, item 6: the Referer pattern clean_referrer used backtracked quadratically on a long
value that fails at its end (``"http://" + "a" * n + " "``). This counts the CPU instructions of
one check (valgrind's callgrind: the same count for the same program and input, whatever else the
machine does; each figure is a run with ``--calls`` checks minus a run with none, divided by
``--calls``) for the old pattern and for today's `clean_referrer`, at 1 KB and 4 KB. Linear work
makes the 4 KB / 1 KB ratio about 4; quadratic work makes it about 16. Without valgrind, CPU time
(``time.process_time``, best of 5) stands in, which moves with the machine's load.

Slow: several minutes under valgrind, nearly all of it the old pattern. docs/security.md has
the figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_PATTERN = r"[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f-\uffff/?#]+[\x21-\x7e]*"
SIZES = {"1 KB": 1024, "4 KB": 4096}

# Run under callgrind: `calls` checks of one hostile value by one implementation.
_PROGRAM = """
import re, sys
from capi_middleware.rules.page_url import clean_referrer
old = re.compile(sys.argv[1])
which, size, calls = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
value = "http://" + "a" * (size - 8) + " "
check = old.fullmatch if which == "old" else clean_referrer
for _ in range(calls):
    check(value)
"""


def hostile(size: int) -> str:
    return "http://" + "a" * (size - 8) + " "


def instructions(which: str, size: int, calls: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                _PROGRAM,
                OLD_PATTERN,
                which,
                str(size),
                str(calls),
            ],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        summary = re.search(rb"^summary: (\d+)", out.read_bytes(), re.MULTILINE)
        if summary is None:
            raise RuntimeError("no callgrind summary")
        return int(summary[1])


def per_check_instructions(which: str, size: int, calls: int) -> float:
    return (instructions(which, size, calls) - instructions(which, size, 0)) / calls


def per_check_seconds(which: str, size: int, calls: int) -> float:
    sys.path.insert(0, str(ROOT))
    from capi_middleware.rules.page_url import clean_referrer

    check = re.compile(OLD_PATTERN).fullmatch if which == "old" else clean_referrer
    value = hostile(size)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            check(value)
        best = min(best, (time.process_time() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    counted = shutil.which("valgrind") is not None
    measure = per_check_instructions if counted else per_check_seconds
    unit = "instructions" if counted else "seconds of CPU (valgrind not found)"
    print(f"one check of 'http://' + 'a'*n + ' ', {unit} per check")
    print(f"{'':14} {'1 KB':>14} {'4 KB':>14} {'4 KB / 1 KB':>12}")
    for which, label in (("old", "old pattern"), ("new", "clean_referrer")):
        small, large = (measure(which, size, args.calls) for size in SIZES.values())
        print(f"{label:14} {small:14,.0f} {large:14,.0f} {large / small:12.1f}", flush=True)


if __name__ == "__main__":
    main()
