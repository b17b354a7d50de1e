"""The Graph API client: one pooled ``httpx.Client``, one ``POST /{pixel_id}/events`` per batch.

The body is spliced from the stored payload bytes, so a retry sends exactly the bytes (and the
event_ids) of the first attempt. The token travels in the JSON body, never in the URL (httpx logs
full URLs), and any echo of it or of the app secret in Meta's message is redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery.classify import Verdict, classify_answer, classify_exception
from capi_middleware.rules.request_body import build_request_body, encode_json

__all__ = ["GraphClient", "redact"]

logger = logging.getLogger("capi_middleware.delivery")

_USER_AGENT = "capi-middleware"


def redact(text: str, destination: Destination) -> str:
    """``text`` with the destination's token and app secret replaced by ``***``."""
    for secret in (destination.access_token, destination.app_secret):
        if secret:
            text = text.replace(secret, "***")
    return text


class GraphClient:
    """Sends batches of stored event payloads to the Graph API and classifies each answer.

    Parameters:
        config: supplies ``graph_url``, ``api_version``, ``timeout`` and ``partner_agent``.
        transport: an httpx transport to use instead of the network (tests, the fake).
    """

    def __init__(self, config: CAPIConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self._config = config
        # Meta recommends a 1.5 s timeout; connecting gets the same budget, a pool wait too.
        timeout = httpx.Timeout(config.timeout)
        self._client = httpx.Client(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            headers={"user-agent": _USER_AGENT},
            follow_redirects=False,
        )
        self._envelopes: dict[Destination, bytes] = {}

    def _envelope(self, destination: Destination) -> bytes:
        """``,"access_token":...}``: the part of the body after ``data``, built once."""
        cached = self._envelopes.get(destination)
        if cached is None:
            body = build_request_body(
                [{}],
                access_token=destination.access_token,
                app_secret=destination.app_secret,
                test_event_code=destination.test_event_code,
                partner_agent=self._config.partner_agent,
            )
            del body["data"]
            cached = b"," + encode_json(body)[1:]
            self._envelopes[destination] = cached
        return cached

    def body(self, destination: Destination, payloads: Sequence[bytes]) -> bytes:
        """The request body for ``payloads`` (each one event's JSON)."""
        return b'{"data":[' + b",".join(payloads) + b"]" + self._envelope(destination)

    def send(self, destination: Destination, payloads: Sequence[bytes]) -> Verdict:
        """POST the batch; never raises: network failures come back as transient verdicts."""
        url = self._config.events_url(destination.pixel_id)
        try:
            response = self._client.post(
                url,
                content=self.body(destination, payloads),
                headers={"content-type": "application/json"},
            )
            # Reading the body can time out as well; keep it inside the guard.
            content = response.read()
        except Exception as exc:  # any failure to get an answer is transient, never ours to raise
            return classify_exception(exc)
        verdict = classify_answer(
            response.status_code, response.headers, content, sent=len(payloads)
        )
        if verdict.message:
            clean = redact(verdict.message, destination)
            if clean != verdict.message:
                verdict = Verdict(
                    verdict.kind,
                    verdict.reason,
                    verdict.status,
                    verdict.code,
                    verdict.subcode,
                    clean,
                    verdict.fbtrace_id,
                    verdict.retry_after,
                )
        return verdict

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()
