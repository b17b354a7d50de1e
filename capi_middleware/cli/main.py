"""The ``capi-middleware`` command (also ``python -m capi_middleware``).

Subcommands:
  demo             the demo shop and the built-in fake Graph API on 127.0.0.1
  send-test-event  one event to the real Graph API with a test event code; prints Meta's answer
  check            validate a config and an event payload offline, as Meta would name problems
  outbox           inspect and act on a durable outbox (status, dead, replay, purge)

Exit codes: 0 success, 1 the thing checked or sent failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from capi_middleware.cli.terminal import printable, redact
from capi_middleware.config import CAPIConfig, misnamed_variables
from capi_middleware.results import describe_match_keys

__all__ = ["main"]


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pixel-id", help="pixel (dataset) id [META_PIXEL_ID]")
    parser.add_argument(
        "--access-token",
        help="Conversions API token [META_ACCESS_TOKEN]; prefer the variable (shell history)",
    )
    parser.add_argument("--app-secret", help="app secret for appsecret_proof [META_APP_SECRET]")
    parser.add_argument("--graph-url", help="Graph API base URL [META_GRAPH_URL]")
    parser.add_argument("--api-version", help="Graph API version, e.g. v26.0 [META_API_VERSION]")


def _config_from_args(args: argparse.Namespace, **extra: Any) -> CAPIConfig:
    return CAPIConfig.from_env(
        pixel_id=args.pixel_id,
        access_token=args.access_token,
        app_secret=args.app_secret,
        graph_url=args.graph_url,
        api_version=args.api_version,
        **extra,
    )


def _version() -> str:
    from capi_middleware import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-middleware",
        description="Meta Conversions API middleware: demo, checks, test events and outbox tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the demo shop against the built-in fake Graph API",
        description="Start the demo shop and a fake Graph API on 127.0.0.1, print the URL, and "
        "print each event as it is sent, with its match keys and Meta's (fake) answer.",
    )
    demo.add_argument("--port", type=int, default=8000, help="shop port (default 8000; 0 = any)")
    demo.add_argument(
        "--smoke",
        action="store_true",
        help="drive one visit and one purchase through the shop, check delivery, and exit",
    )

    send = sub.add_parser(
        "send-test-event",
        help="send one event to the Graph API with a test event code",
        description="Send one event (default PageView) to the real Graph API under a test event "
        "code, so it shows in Events Manager → Test Events, and print Meta's answer.",
    )
    _add_config_options(send)
    send.add_argument(
        "--test-event-code", help="code from Events Manager → Test Events [META_TEST_EVENT_CODE]"
    )
    send.add_argument("--event-name", default="PageView", help="event name (default PageView)")
    send.add_argument("--url", default="https://example.com/", help="event_source_url")
    send.add_argument("--email", help="an email to hash and send as em")
    send.add_argument(
        "--value", type=float, help="custom_data.value, e.g. 79.99 (a Purchase needs --currency)"
    )
    send.add_argument("--currency", help="custom_data.currency, ISO 4217, e.g. USD")

    check = sub.add_parser(
        "check",
        help="validate a config and an event payload offline",
        description="Read an event as JSON from FILE (or stdin with '-') and print every problem "
        "as Meta would name it. The JSON is either a Meta-shaped event (user_data already "
        "hashed) or, with --build, track() input: "
        '{"event_name": ..., "user_data": {"email": ...}, "custom_data": {...}}. '
        "A JSON list checks several events. META_* variables are checked too.",
    )
    check.add_argument("file", nargs="?", default="-", help="JSON file, or - for stdin")
    check.add_argument(
        "--build", action="store_true", help="treat the input as track() input and build it"
    )
    check.add_argument(
        "--config-only",
        action="store_true",
        help="check only the META_* configuration (fails when no pixel is configured)",
    )

    try:
        from capi_middleware.cli.outbox import add_outbox_parser
    except ImportError:  # pragma: no cover - the outbox module is part of the package
        pass
    else:
        add_outbox_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from capi_middleware.demo import run_demo

            return run_demo(port=args.port, smoke=args.smoke)
        if args.command == "send-test-event":
            return _send_test_event(args, sys.stdout)
        if args.command == "check":
            return _check(args, sys.stdout)
        if args.command == "outbox":
            from capi_middleware.cli.outbox import run_outbox

            return run_outbox(args)
    except ValueError as exc:  # configuration errors name the option
        print(f"capi-middleware: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.print_help()
    return 2


# -- check ------------------------------------------------------------------------------------


class _BadInput(Exception):
    """An input file that cannot be read as JSON; its message is one line for the user."""


def _read_json(path: str) -> Any:
    """The JSON in ``path`` (``-``: stdin); `_BadInput` with one clear line for a bad file."""
    where = "stdin" if path == "-" else printable(path)
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadInput(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise _BadInput(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise _BadInput(f"{where}: JSON nested too deeply") from None
    except OSError as exc:
        raise _BadInput(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _check(args: argparse.Namespace, out: TextIO) -> int:
    from capi_middleware.rules.events import build_event
    from capi_middleware.rules.validation import validate_event

    problems_found = 0
    for name, meant in misnamed_variables():
        print(f"config: warning: {name} is set but not read; did you mean {meant}?", file=out)
    try:
        config = CAPIConfig.from_env()
    except ValueError as exc:
        print(f"config: {exc}", file=out)
        return 1
    pixels = len(config.destinations())
    if pixels == 0 and args.config_only:
        print(
            "config: no pixel configured: set META_PIXEL_ID and META_ACCESS_TOKEN"
            + (" (META_DRY_RUN is set: events would only be logged)" if config.dry_run else ""),
            file=out,
        )
        return 1
    print(f"config: ok ({pixels} pixel(s))", file=out)
    if config.test_event_code:
        print("config: warning: META_TEST_EVENT_CODE is set; remove it in production", file=out)
    if args.config_only:
        return 0
    try:
        data = _read_json(args.file)
    except _BadInput as exc:
        print(f"input: cannot read JSON: {exc}", file=out)
        return 2
    events = data if isinstance(data, list) else [data]
    for index, item in enumerate(events):
        label = f"event[{index}]"
        if args.build:
            if not isinstance(item, dict) or not isinstance(item.get("event_name"), str):
                print(f"{label}: event_name: required (a string)", file=out)
                problems_found += 1
                continue
            known = {
                "user_data",
                "custom_data",
                "event_id",
                "event_time",
                "action_source",
                "event_source_url",
                "referrer_url",
            }
            result = build_event(
                item["event_name"],
                default_country=config.default_country,
                hash_external_id=config.hash_external_id,
                **{k: v for k, v in item.items() if k in known},
            )
            problems = list(result.problems)
        else:
            problems = validate_event(item)
        fatal = [p for p in problems if p.fatal]
        for problem in problems:
            kind = "error" if problem.fatal else "dropped"
            print(f"{label}: {kind}: {printable(problem)}", file=out)
        if args.build and result.event is not None:
            print(f"{label}: {describe_match_keys(result.event.user_data, problems)}", file=out)
        if not fatal:
            print(f"{label}: ok", file=out)
        problems_found += len(fatal)
    return 1 if problems_found else 0


# -- send-test-event --------------------------------------------------------------------------


def _send_test_event(args: argparse.Namespace, out: TextIO) -> int:
    import httpx

    from capi_middleware.rules.events import build_event
    from capi_middleware.rules.request_body import build_request_body, encode_json

    config = _config_from_args(args, test_event_code=args.test_event_code)
    if not config.destinations():
        print("send-test-event: set META_PIXEL_ID and META_ACCESS_TOKEN", file=sys.stderr)
        return 2
    if not config.test_event_code:
        print(
            "send-test-event: a test event code is required (--test-event-code or "
            "META_TEST_EVENT_CODE), so the event shows under Test Events",
            file=sys.stderr,
        )
        return 2
    user_data: dict[str, Any] = {"client_user_agent": "capi-middleware send-test-event"}
    if args.email:
        user_data["email"] = args.email
    else:
        user_data["external_id"] = "capi-middleware-test"
    custom_data: dict[str, Any] = {}
    if args.value is not None:
        custom_data["value"] = args.value
    if args.currency:
        custom_data["currency"] = args.currency
    result = build_event(
        args.event_name,
        user_data=user_data,
        custom_data=custom_data,
        event_source_url=args.url,
        now=time.time(),
        hash_external_id=config.hash_external_id,
    )
    if result.event is None:
        for problem in result.problems:
            print(f"event: {printable(problem)}", file=out)
        return 1
    # Every secret this run holds, and the proofs derived from them: an answer may echo any.
    secrets: list[str | None] = [config.enhancement_secret]
    status = 0
    with httpx.Client(timeout=max(config.timeout, 10.0)) as client:
        for dest in config.destinations():
            body = build_request_body(
                [result.event.to_dict()],
                access_token=dest.access_token,
                app_secret=dest.app_secret,
                test_event_code=dest.test_event_code,
                partner_agent=config.partner_agent,
            )
            for held in config.destinations():
                secrets += [held.access_token, held.app_secret]
            secrets.append(body.get("appsecret_proof"))
            try:
                response = client.post(
                    config.events_url(dest.pixel_id),
                    content=encode_json(body),
                    headers={"content-type": "application/json"},
                )
            except httpx.HTTPError as exc:
                print(f"pixel {dest.pixel_id}: network error: {type(exc).__name__}", file=out)
                status = 1
                continue
            print(f"pixel {dest.pixel_id}: HTTP {response.status_code}", file=out)
            print(printable(redact(response.text, secrets)), file=out)
            if response.status_code != 200:
                status = 1
    print(f"event_id: {result.event.event_id}", file=out)
    print(describe_match_keys(result.event.user_data, result.problems), file=out)
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
