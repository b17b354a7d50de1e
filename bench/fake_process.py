"""The fake Graph API in a child process, for benchmarks whose sender must not share its GIL.

    python bench/fake_process.py [LATENCY]   # prints its URL; serves until stdin closes

The fake keeps every event it accepted (tens of thousands of dicts by the end of a run), so its
cyclic garbage collector's full passes grow to 50-180 ms each; one would land on whichever
sender was waiting for an answer at that moment. Nothing here makes cycles, so the collector is
off in the child: every sender meets the same fake without pauses.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def serve(latency: float) -> None:
    """Serve the fake (answering after ``latency`` seconds) until stdin closes."""
    # Imported here, in the child: a process measuring another version (bench/track_cost.py's
    # baseline) imports this module with that version's package first on its path.
    from capi_middleware.testing.fake import FakeGraphAPI

    gc.disable()
    fake = FakeGraphAPI(validate=False)
    fake.latency = latency
    fake.start()
    print(fake.url, flush=True)
    sys.stdin.read()
    fake.stop()


@contextmanager
def fake_process(latency: float = 0.0) -> Iterator[str]:
    """Start the fake in a child process; yields its URL, stops it on exit."""
    proc = subprocess.Popen(
        [sys.executable, __file__, str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError("the fake Graph API did not start")
        yield url
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


if __name__ == "__main__":
    serve(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
