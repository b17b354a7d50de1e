"""A nightly script that uploads the day's CRM leads to Meta as Lead events.

Run:   python examples/jobs/nightly_leads.py leads.csv     (cron: 0 3 * * *)
Env:   META_PIXEL_ID, META_ACCESS_TOKEN (and META_OUTBOX to keep what a failure leaves)

The CSV has ``email, phone, first_name, last_name, country, created_at`` (Unix seconds) and a
``lead_id``. There is no visitor here, so the script states the basis for sending (``consent=True``:
the form these leads filled in asked for it) and the ``action_source`` (``system_generated``).
``with`` closes the client at the end, which waits for delivery; the exit code says whether
everything arrived.
"""

from __future__ import annotations

import csv
import sys

from capi_middleware import CAPIClient


def main(path: str) -> int:
    counts: dict[str, int] = {}
    with CAPIClient.from_env() as client, open(path, newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            result = client.track(
                "Lead",
                action_source="system_generated",
                consent=True,
                event_id=f"crm-lead-{row['lead_id']}",  # a re-run sends the same ids: deduplicated
                event_time=int(row["created_at"]),
                user_data={
                    "email": row["email"],
                    "phone": row["phone"],
                    "first_name": row["first_name"],
                    "last_name": row["last_name"],
                    "country": row["country"],
                    "external_id": row["lead_id"],
                },
                lead_source="crm",
            )
            counts[result.status] = counts.get(result.status, 0) + 1
            for problem in result.problems:
                print(f"lead {row['lead_id']}: {problem}", file=sys.stderr)
        delivered = client.flush(30.0)
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0 if delivered and set(counts) <= {"queued"} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
