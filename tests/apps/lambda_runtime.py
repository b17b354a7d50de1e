"""A stand-in for the AWS Lambda runtime, run as its own process by tests/test_serverless.py.

Like Lambda's runtime it imports the handler once (the cold start), then for each invocation
calls ``handler(event, context)`` and hands back what it returned; between invocations the test
freezes the whole process (SIGSTOP), as Lambda does, and may kill it without warning (SIGKILL),
as Lambda does to an idle instance. Invocations come as JSON lines on stdin; answers go out as
JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lambda_handler" / "app.py"


def main() -> None:
    spec = importlib.util.spec_from_file_location("lambda_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum runs on the thread's loop
    context = SimpleNamespace(function_name="shop-leads", aws_request_id="local")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        response = module.handler(json.loads(line), context)
        print(json.dumps(response), flush=True)


if __name__ == "__main__":
    main()
