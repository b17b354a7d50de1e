"""The Graph API client: one pooled ``httpx.Client``, one ``POST /{pixel_id}/events`` per batch.

The body is spliced from the stored payload bytes, so a retry sends exactly the bytes (and the
event_ids) of the first attempt. Each request has one deadline, ``config.timeout`` from its start,
and its answer is read up to `MAX_ANSWER_BYTES` (Graph's answers are a few hundred bytes): a
server that drips its answer or sends a huge one holds the only sender thread no longer than
that, and the batch is retried like any other transient failure (issue 10).
The token travels in the JSON body, never in the URL (httpx logs
full URLs), and any echo of it or of the app secret in Meta's message is redacted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import httpx

from capi_middleware.config import CAPIConfig, Destination
from capi_middleware.delivery.classify import Verdict, classify_answer, classify_exception
from capi_middleware.rules.request_body import build_request_body, encode_json

__all__ = ["MAX_ANSWER_BYTES", "GraphClient", "redact"]

logger = logging.getLogger("capi_middleware.delivery")

_USER_AGENT = "capi-middleware"
MAX_ANSWER_BYTES = 256 * 1024  # Graph answers in well under 1 KiB; an error page in a few KiB


class _AnswerRefused(Exception):
    """The answer broke the request's deadline or size cap; ``verdict`` says which."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


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
        deadline = time.monotonic() + self._config.timeout
        try:
            with self._client.stream(
                "POST",
                url,
                content=self.body(destination, payloads),
                headers={"content-type": "application/json"},
            ) as response:
                content = self._read_answer(response, deadline)
                status, headers = response.status_code, response.headers
        except _AnswerRefused as refused:
            return refused.verdict
        except Exception as exc:  # any failure to get an answer is transient, never ours to raise
            return classify_exception(exc)
        try:
            verdict = classify_answer(status, headers, content, sent=len(payloads))
        except Exception:  # classify is total; should an answer still defeat it, retry the batch
            verdict = Verdict(
                "transient",
                "unparseable",
                status,
                message=f"unparseable answer of {len(content)} bytes",
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

    def _read_answer(self, response: httpx.Response, deadline: float) -> bytes:
        """The answer's body, read until the deadline and up to `MAX_ANSWER_BYTES`.

        The deadline is checked between reads; one read waits at most ``timeout`` (httpx's read
        timeout), so a request ends at most one read timeout past its deadline.
        """
        status = response.status_code
        declared = response.headers.get("content-length", "")
        length = int(declared) if declared.isdigit() else None
        if length is not None and length > MAX_ANSWER_BYTES:
            raise _AnswerRefused(_too_large(status, length))
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _AnswerRefused(_too_large(status, size))
            chunks.append(chunk)
            # A complete answer that arrived late still counts: Meta may have taken the events.
            if time.monotonic() > deadline and (length is None or size < length):
                raise _AnswerRefused(
                    Verdict(
                        "transient",
                        "timeout",
                        status,
                        message=f"no complete answer within {self._config.timeout:g}s "
                        f"({size} bytes read)",
                    )
                )
        return b"".join(chunks)

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()


def _too_large(status: int, size: int) -> Verdict:
    return Verdict(
        "transient",
        "answer_too_large",
        status,
        message=f"answer of {size} bytes or more; at most {MAX_ANSWER_BYTES} are read",
    )
