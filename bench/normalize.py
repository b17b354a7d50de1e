"""Build, normalize, hash, validate, serialize 10,000 Purchase events: ours vs Meta's SDK.

Run: /work/venv/bin/python bench/normalize.py [--events N] [--repeat R] [--profile]
     /work/venv/bin/python bench/normalize.py --rules [--before REV] [--instructions]

Both sides start from the same raw records (email, phone, first/last name, city, state, zip,
country, IP, user agent, fbc, fbp, value, currency) and end with one JSON document per event:

- ours: ``build_event(...)`` (GA4 mapping, normalize + hash, every validation rule), then
  ``Event.to_dict()`` and ``encode_json``;
- Meta's ``facebook_business`` SDK: ``UserData`` / ``CustomData`` / ``Event`` objects, then
  ``EventRequest(...).normalize()``, which is exactly what ``EventRequest.execute()`` does before
  sending (normalize + hash each field, ``json.dumps`` each event). Nothing is sent.

Each side runs ``--repeat`` times in this process, the sides taking turns; the best run counts
(least disturbed by the machine). Records are all distinct, so no cache can serve a repeated
email, phone, IP or cookie within a run.

Two more lines put the figures in proportion: ``normalize_user_data`` alone (the share of our
time that is user-data normalization), and a "floor": strip + lowercase + SHA-256 of the same
eight values and one ``json.dumps``, with no validation and no per-key rules at all. No correct
implementation can be faster than the floor, so SDK / floor bounds the ratio any one can reach.

``--rules`` measures what a change to the normalization rules costs: ``normalize_user_data``
of this checkout against the same function of ``normalize.py`` as it was at ``--before`` (a git
revision, read with ``git show``; default: main before issue 14's rules), on the same records,
the two taking turns in one process. Two record mixes: ``us`` (the Purchase records above) and
``world`` (names with accents, digits and emoji, country names in several languages, phones
with and without ``+``, external ids, postal codes of several countries). Times are this
process's CPU time (``time.process_time``), so time spent descheduled on a busy machine does not
count. ``--instructions`` counts instructions instead, under valgrind's callgrind (deterministic
whatever else the machine does; needs valgrind, takes minutes): each side and mix runs twice,
once building and warming only and once also normalizing ``--events`` records; the difference
divided by ``--events`` is one record's cost.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capi_middleware.rules.events import build_event, encode_json

CITIES = ["New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "San Diego", "Dallas"]
STATES = ["NY", "CA", "IL", "TX", "AZ", "CA", "TX"]
FIRST = ["John", "Mary", "José", "Zoë", "Ahmed", "Li", "Anne-Marie"]
LAST = ["Smith", "O'Brien", "García", "Nguyen", "Müller", "Kowalski", "Lee"]
UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


def make_records(n: int, now: int) -> list[dict[str, Any]]:
    """Distinct, realistic Purchase records."""
    records = []
    for i in range(n):
        k = i % len(CITIES)
        records.append(
            {
                "event_id": f"order-{i}-purchase",
                "event_time": now - (i % 3600),
                "url": f"https://shop.example.com/checkout/done?order={i}",
                "email": f"  Customer.{i}@Example.com ",
                "phone": f"+1 (616) 5{i % 100:02d}-{i % 10000:04d}",
                "first_name": FIRST[i % len(FIRST)],
                "last_name": LAST[(i // 7) % len(LAST)],
                "city": CITIES[k],
                "state": STATES[k],
                "zip": f"{10000 + i % 89999:05d}-1234",
                "country": "US",
                "ip": f"203.0.{i % 256}.{(i * 7) % 254 + 1}",
                "ua": UA,
                "fbc": f"fb.1.1700000000000.IwAR{i:08d}abc",
                "fbp": f"fb.1.1700000000000.{1000000 + i}",
                "value": round(10 + (i % 500) * 1.37, 2),
                "currency": "USD",
            }
        )
    return records


def run_ours(records: list[dict[str, Any]], now: float) -> list[bytes]:
    out = []
    for r in records:
        result = build_event(
            "Purchase",
            user_data=user_data_of(r),
            custom_data={"value": r["value"], "currency": r["currency"]},
            event_id=r["event_id"],
            event_time=r["event_time"],
            event_source_url=r["url"],
            now=now,
        )
        if result.event is None:
            raise SystemExit(f"ours refused a bench event: {result.problems}")
        out.append(encode_json(result.event.to_dict()))
    return out


def run_sdk(records: list[dict[str, Any]], now: float) -> list[str]:
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.adobjects.serverside.user_data import UserData

    events = []
    for r in records:
        user_data = UserData(
            email=r["email"],
            phone=r["phone"],
            first_name=r["first_name"],
            last_name=r["last_name"],
            city=r["city"],
            state=r["state"],
            zip_code=r["zip"],
            country_code=r["country"],
            client_ip_address=r["ip"],
            client_user_agent=r["ua"],
            fbc=r["fbc"],
            fbp=r["fbp"],
        )
        custom_data = CustomData(value=r["value"], currency=r["currency"])
        events.append(
            Event(
                event_name="Purchase",
                event_time=r["event_time"],
                event_id=r["event_id"],
                event_source_url=r["url"],
                action_source=ActionSource.WEBSITE,
                user_data=user_data,
                custom_data=custom_data,
            )
        )
    # What EventRequest.execute() does before the HTTP call: normalize (hash) and json.dumps
    # every event. Batches of 1,000, Meta's limit per request.
    out: list[str] = []
    for start in range(0, len(events), 1000):
        request = EventRequest(pixel_id="1234567890", events=events[start : start + 1000])
        out.extend(request.normalize())
    return out


def user_data_of(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "email": r["email"],
        "phone": r["phone"],
        "first_name": r["first_name"],
        "last_name": r["last_name"],
        "city": r["city"],
        "state": r["state"],
        "zip": r["zip"],
        "country": r["country"],
        "client_ip_address": r["ip"],
        "client_user_agent": r["ua"],
        "fbc": r["fbc"],
        "fbp": r["fbp"],
    }


def run_normalize_only(records: list[dict[str, Any]], now: float) -> list[Any]:
    from capi_middleware.normalize import normalize_user_data

    return [normalize_user_data(user_data_of(r)) for r in records]


_FLOOR_HASHED = (
    ("em", "email"),
    ("ph", "phone"),
    ("fn", "first_name"),
    ("ln", "last_name"),
    ("ct", "city"),
    ("st", "state"),
    ("zp", "zip"),
    ("country", "country"),
)


def run_floor(records: list[dict[str, Any]], now: float) -> list[bytes]:
    """The least any implementation must do: hash 8 values, serialize. Not a correct one."""
    sha256 = hashlib.sha256
    out = []
    for r in records:
        user_data: dict[str, Any] = {
            key: [sha256(r[name].strip().lower().encode()).hexdigest()]
            for key, name in _FLOOR_HASHED
        }
        user_data["client_ip_address"] = r["ip"]
        user_data["client_user_agent"] = r["ua"]
        user_data["fbc"] = r["fbc"]
        user_data["fbp"] = r["fbp"]
        event = {
            "event_name": "Purchase",
            "event_time": r["event_time"],
            "event_id": r["event_id"],
            "action_source": "website",
            "event_source_url": r["url"],
            "user_data": user_data,
            "custom_data": {"value": r["value"], "currency": r["currency"]},
        }
        out.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    return out


Runner = Callable[[list[dict[str, Any]], float], Any]


def best_of(
    runners: dict[str, Runner],
    records: list[dict[str, Any]],
    now: float,
    repeat: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best time of each runner by ``clock``; the runners take turns so drift hits all alike."""
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for name, fn in runners.items():
            gc.collect()
            start = clock()
            fn(records, now)
            best[name] = min(best[name], clock() - start)
    return best


def check_same_hashes(records: list[dict[str, Any]], now: float) -> None:
    """Both sides must hash the same normalized values (else the race is not a fair one)."""
    ours = json.loads(run_ours(records[:50], now)[0])["user_data"]
    sdk = json.loads(run_sdk(records[:50], now)[0])["user_data"]
    for key in ("em", "ph", "fn", "ln", "ct", "st", "zp", "country"):
        theirs = sdk[key] if isinstance(sdk[key], list) else [sdk[key]]
        if ours[key] != theirs:
            print(f"note: {key} differs between ours and the SDK (normalization rules differ)")


# -- --rules: the normalization rules of this checkout against an earlier revision's ----------

# main just before issue 14 (match quality) changed the rules.
BEFORE_RULES = "0dd449d"
NORMALIZE_PATH = "capi_middleware/normalize.py"

WORLD_NAMES = ["Zoë", "John2", "Anne-Marie", "José 😀", "Müller", "李", "O'Brien", "Ahmed"]
WORLD_CITIES = ["Paris ❤️", "München", "São Paulo", "New York", "東京", "Zürich", "Köln"]
WORLD_COUNTRIES = ["FR", "Deutschland", "Brasil", "United States", "JP", "Schweiz", "Germany"]
WORLD_ZIPS = ["75008", "80331", "01310-100", "10001-1234", "100-0001", "8001", "50667"]
WORLD_PHONES = [
    "+33 6 12 34 56 78",
    "0170 1234567",
    "+55 11 98765-4321",
    "(212) 555-0100",
    "+81 90-1234-5678",
    "+41 44 668 18 00",
    "+0049 221 1234567",
]


def make_world_records(n: int) -> list[dict[str, Any]]:
    """Distinct records from several countries: the rules' non-ASCII and national paths."""
    records = []
    for i in range(n):
        k = i % len(WORLD_CITIES)
        records.append(
            {
                "email": f"Kunde.{i}@Example.de",
                "phone": WORLD_PHONES[k] + f"{i % 10}",
                "first_name": WORLD_NAMES[i % len(WORLD_NAMES)],
                "last_name": WORLD_NAMES[(i // 7) % len(WORLD_NAMES)],
                "city": WORLD_CITIES[k],
                "zip": WORLD_ZIPS[k],
                "country": WORLD_COUNTRIES[k],
                "external_id": f"crm user {i}",
                "client_ip_address": f"2001:4860:{i % 65536:x}::{i % 9 + 1}",
                "client_user_agent": UA,
                "fbp": f"fb.1.1700000000000.{1000000 + i}",
            }
        )
    return records


def load_normalize_at(revision: str) -> types.ModuleType:
    """``capi_middleware/normalize.py`` as it was at ``revision``, as a module of its own."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{revision}:{NORMALIZE_PATH}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"normalize_at_{revision}")
    module.__file__ = f"{revision}:{NORMALIZE_PATH}"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def user_data_runner(module: types.ModuleType) -> Runner:
    normalize_user_data = module.normalize_user_data

    def run(records: list[dict[str, Any]], now: float) -> list[Any]:
        return [normalize_user_data(r) for r in records]

    return run


def rule_mixes(events: int) -> dict[str, list[dict[str, Any]]]:
    return {
        "us": [user_data_of(r) for r in make_records(events, 1_700_000_000)],
        "world": make_world_records(events),
    }


def run_side(side: str, before_revision: str, mix: str, events: int, measure: bool) -> None:
    """One side of ``--instructions``, run under callgrind: build, warm, maybe normalize."""
    if side == "before":
        module = load_normalize_at(before_revision)
    else:
        from capi_middleware import normalize as module
    records = rule_mixes(events)[mix]
    run = user_data_runner(module)
    run(rule_mixes(500)[mix], 0.0)  # warm on other records: tables, metadata, regex caches
    if measure:
        run(records, 0.0)


def count_instructions(side: str, before_revision: str, mix: str, events: int) -> float:
    """Instructions per record of one side on one mix (callgrind, start-up subtracted)."""
    totals = []
    for measure in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                f"--side={side}",
                f"--mix={mix}",
                f"--events={events}",
                f"--before={before_revision}",
                *(["--measure"] if measure else []),
            ]
            env = {**os.environ, "PYTHONHASHSEED": "0"}
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=3600)
            summary = re.search(rb"^summary: (\d+)", out.read_bytes(), re.MULTILINE)
            if summary is None:
                raise RuntimeError(f"no callgrind summary for {side} {mix}")
            totals.append(int(summary[1]))
    return (totals[1] - totals[0]) / events


def run_rules_instructions(before_revision: str, events: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {events} records per mix; "
        "normalize_user_data instructions/record (callgrind)"
    )
    print(f"{'mix':<6} {'before ' + before_revision:>16} {'after':>10} {'after / before':>15}")
    for mix in ("us", "world"):
        b = count_instructions("before", before_revision, mix, events)
        a = count_instructions("after", before_revision, mix, events)
        print(f"{mix:<6} {b:16,.0f} {a:10,.0f} {a / b:14.3f}x")


def run_rules(before_revision: str, events: int, repeat: int) -> None:
    from capi_middleware import normalize as after

    before = load_normalize_at(before_revision)
    mixes = rule_mixes(events)
    print(
        f"python {platform.python_version()} on {platform.machine()}, {events} records per mix, "
        f"best of {repeat}; normalize_user_data µs/record"
    )
    print(f"{'mix':<6} {'before ' + before_revision:>16} {'after':>10} {'after / before':>15}")
    runners = {"before": user_data_runner(before), "after": user_data_runner(after)}
    for mix, records in mixes.items():
        for run in runners.values():
            run(records[:500], 0.0)  # warm: tables, phone metadata, memos, regex caches
        # CPU time of this process: on a shared machine, time spent descheduled is not ours.
        best = best_of(runners, records, 0.0, repeat, time.process_time)
        b, a = (best[name] / events * 1e6 for name in ("before", "after"))
        print(f"{mix:<6} {b:16.2f} {a:10.2f} {a / b:14.3f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile our side once")
    parser.add_argument(
        "--rules", action="store_true", help="normalize_user_data: this checkout vs --before"
    )
    parser.add_argument("--before", default=BEFORE_RULES, help="git revision to compare with")
    parser.add_argument(
        "--instructions", action="store_true", help="with --rules: count under callgrind"
    )
    # One side of --instructions, run by it under valgrind.
    parser.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--mix", choices=("us", "world"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side is not None:
        run_side(args.side, args.before, args.mix or "us", args.events, args.measure)
        return 0
    if args.rules and args.instructions:
        run_rules_instructions(args.before, args.events)
        return 0
    if args.rules:
        run_rules(args.before, args.events, args.repeat)
        return 0

    now = time.time()
    records = make_records(args.events, int(now))
    check_same_hashes(records, now)
    # warm both (imports, pycountry tables, phonenumbers metadata, regex caches)
    run_ours(records[:200], now)
    run_sdk(records[:200], now)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run_ours(records, now)
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        print(stream.getvalue())
        return 0

    runners: dict[str, Runner] = {
        "ours": run_ours,
        "sdk": run_sdk,
        "normalize": run_normalize_only,
        "floor": run_floor,
    }
    best = best_of(runners, records, now, args.repeat)
    per_event = {name: seconds / args.events * 1e6 for name, seconds in best.items()}
    ours, sdk = per_event["ours"], per_event["sdk"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{args.events} events, best of {args.repeat}"
    )
    print(f"capi_middleware build_event + to_dict + encode_json  {ours:7.1f} µs/event")
    print(f"facebook_business objects + EventRequest.normalize()  {sdk:7.1f} µs/event")
    print(f"ratio SDK / ours                                      {sdk / ours:7.2f}x")
    print(f"  of ours: normalize_user_data alone                  {per_event['normalize']:7.1f} µs")
    print(f"floor: strip+lower+SHA-256 x8 + json.dumps            {per_event['floor']:7.1f} µs")
    print(f"ceiling SDK / floor                                   {sdk / per_event['floor']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
