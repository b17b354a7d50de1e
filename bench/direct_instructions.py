"""Instructions per request of bench/overhead.py's direct-call scenarios, under callgrind.

    python bench/direct_instructions.py [--requests 2000] [--scenario N ...]

Timings of the direct calls move by 10-50% on a shared 2-core machine; instruction counts do not.
Each side (the no-op middleware and CAPIMiddleware) of each scenario runs in its own process under
``valgrind --tool=callgrind`` twice, answering ``--warmup`` and then ``--warmup + --requests``
requests; the difference divided by ``--requests`` is one request's cost, start-up cancelled.
``added`` is CAPIMiddleware's count minus the no-op's. Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(index: int, side: int, n: int) -> None:
    """Run ``n`` requests of scenario ``index`` through side 1 (no-op) or 2 (CAPIMiddleware)."""
    sys.path.insert(0, str(HERE))
    from overhead import _loop, direct_scenarios

    scenario = direct_scenarios(max(n, 1))[index]
    app, scope = scenario[side], scenario[3]
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_loop(app, scope, n))
    loop.close()


def count(index: int, side: int, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                str(index),
                str(side),
                str(n),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        match = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        assert match, "no summary line in callgrind's output"
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--scenario", type=int, action="append")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(HERE))
    from overhead import direct_scenarios

    names = [s[0] for s in direct_scenarios(1)]
    wanted = args.scenario or list(range(len(names)))
    print(f"{'scenario':44}{'no-op':>10}{'capi':>10}{'added':>10}  (instructions/request)")
    for index in wanted:
        per = []
        for side in (1, 2):
            low = count(index, side, args.warmup)
            high = count(index, side, args.warmup + args.requests)
            per.append((high - low) / args.requests)
        print(
            f"{names[index]:44}{per[0]:>10.0f}{per[1]:>10.0f}{per[1] - per[0]:>10.0f}", flush=True
        )


if __name__ == "__main__":
    main()
