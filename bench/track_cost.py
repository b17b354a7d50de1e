"""What one ``track()`` costs a request, against an earlier version measured in the same run.

    git archive <commit> capi_middleware | tar -x -C /tmp/base
    python bench/track_cost.py --baseline /tmp/base [--rounds 5]

Three rows of bench/overhead.py's direct calls (the ASGI app called in a loop, no server), each
as µs added by CAPIMiddleware over a no-op middleware, for a consented returning visitor's page
view (valid ``_fbp``/``_fbc``, re-sent):

- capture only: no ``track()``;
- one ``track()`` under ``dry_run`` (capture, build, normalize, hash, validate, encode);
- one ``track()`` queued to a real sender aimed at the fake Graph API.

The fake runs in a child process (with this tree's package), so its parsing shares no GIL with
the rows; the sender's own thread does, as it does in an app. Each side runs in its own child
process, ``--baseline``'s package first on its path; the sides alternate for ``--rounds`` rounds
and each row's median is compared. Target (issue 11): ``track()`` within 15% of the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from fake_process import fake_process

HERE = Path(__file__).resolve().parent
ROWS = ("capture only", "track() dry_run", "track() queued")


def child(fake_url: str, n: int, repeats: int) -> None:
    """Measure the rows with whichever ``capi_middleware`` comes first on the path; print JSON."""
    sys.path.insert(0, str(HERE))
    import overhead as o

    scope = o.scope_for(cookies=o.COOKIES)
    noop = o.NoopMiddleware(o.hello)
    out = {}
    base, capi = o.paired_us(noop, o.capi(o.hello), scope, n, repeats)
    out[ROWS[0]] = capi - base
    base, capi = o.paired_us(noop, o.capi(o.hello_tracking), scope, n, repeats)
    out[ROWS[1]] = capi - base
    queued = o.capi(
        o.hello_tracking,
        dry_run=False,
        pixel_id="1234567890",  # FAKE_PIXEL_ID: the names moved between versions
        access_token="EAAB-fake-token-for-tests",  # the fake's (FAKE_ACCESS_TOKEN)
        graph_url=fake_url,
        max_queue=10_000_000,
    )
    base, capi = o.paired_us(noop, queued, scope, n, repeats)
    queued.close(30)
    out[ROWS[2]] = capi - base
    print(json.dumps(out))


def run_side(package_dir: str | None, fake_url: str, n: int, repeats: int) -> dict[str, float]:
    path = [*([package_dir] if package_dir else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    command = [
        sys.executable,
        __file__,
        "--child",
        fake_url,
        "-n",
        str(n),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{package_dir or 'this tree'}: the measuring child failed:\n{done.stderr}"
        )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="DIR", help="a directory holding another package")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians)")
    parser.add_argument("-n", type=int, default=5_000, help="requests per timed loop")
    parser.add_argument("--repeats", type=int, default=11, help="timed loops per row (best)")
    parser.add_argument("--child", metavar="FAKE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.repeats)

    sides = {"this tree": None, **({"baseline": args.baseline} if args.baseline else {})}
    runs: dict[str, dict[str, list[float]]] = {s: {r: [] for r in ROWS} for s in sides}
    with fake_process() as url:
        for _ in range(args.rounds):
            for side, package in sides.items():  # alternate: drift hits both sides alike
                for row, value in run_side(package, url, args.n, args.repeats).items():
                    runs[side][row].append(value)
    header = f"{'µs added per request':24}" + "".join(f"{s:>16}" for s in sides)
    print(header + (f"{'ratio':>8}" if args.baseline else ""))
    for row in ROWS:
        medians = [statistics.median(runs[side][row]) for side in sides]
        line = f"{row:24}" + "".join(f"{m:16.2f}" for m in medians)
        if args.baseline:
            line += f"{medians[0] / medians[1]:8.2f}"
        print(line)
    if args.baseline:
        worst = max(
            statistics.median(runs["this tree"][row]) / statistics.median(runs["baseline"][row])
            for row in ROWS[1:]
        )
        verdict = "OK" if worst <= 1.15 else "OVER"
        print(f"track() rows, worst ratio {worst:.2f} (target <= 1.15): {verdict}")


if __name__ == "__main__":
    main()
