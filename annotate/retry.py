"""Being a good client of a rate-limited service: backoff with jitter, Retry-After, an RPM cap.

The SDKs' own retries (google-genai's tenacity ``HttpRetryOptions``; the ``openai`` client's
``max_retries``) are turned off (the former ignores ``Retry-After``) and both backends retry
here: 408, 429 and 5xx replies and transport errors (timeouts,
refused or dropped connections) are retried with exponential backoff and equal jitter, waiting
at least what the server asked for (the ``Retry-After`` header, or Google's ``RetryInfo``
detail in the error body). Other errors are final.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import openai
from google.genai import errors

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_CODES = frozenset({408, 429})


def _transport_errors() -> tuple[type[Exception], ...]:
    """httpx / httpx2 transport errors (timeouts, connect/read errors): whichever is installed."""
    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(__import__(name).TransportError)
        except ImportError:
            pass
    return tuple(found)


#: the ``openai`` client wraps transport errors (timeouts included) in APIConnectionError
TRANSPORT_ERRORS = _transport_errors() + (openai.APIConnectionError,)

#: an HTTP error reply of either SDK
STATUS_ERRORS = (errors.APIError, openai.APIStatusError)


def _status(err: Exception) -> tuple[int, str]:
    """HTTP status and ``HTTP code STATUS: message`` of an SDK error reply."""
    if isinstance(err, openai.APIStatusError):
        body = err.body.get("error", err.body) if isinstance(err.body, dict) else None
        message = body.get("message") if isinstance(body, dict) and body.get("message") else err.message
        return err.status_code, f"HTTP {err.status_code}: {message}"
    return err.code, f"HTTP {err.code} {err.status or ''}: {err.message or ''}".strip()


class ServiceError(Exception):
    """A request failed for good: a non-retryable error, or retries ran out. Message says which."""


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: random.Random = random) -> float:
    """Delay before retry ``attempt`` (1-based): ``min(max, initial * 2**(attempt-1))`` times U(0.5, 1)."""
    base = min(max_s, initial_s * 2 ** (attempt - 1))
    return base * (0.5 + 0.5 * rng.random())


def retry_after_s(err: errors.APIError | openai.APIStatusError) -> float | None:
    """Seconds the server asked to wait: ``Retry-After`` (seconds or HTTP date) or ``RetryInfo``."""
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    details = getattr(err, "details", None)  # Google's error body (the openai client has none)
    body = details.get("error", details) if isinstance(details, dict) else {}
    for detail in body.get("details", []) if isinstance(body, dict) else []:
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.RetryInfo"):
            m = re.fullmatch(r"([0-9.]+)s", str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


class RateLimiter:
    """At most ``per_minute`` starts per minute, evenly spaced; shared by threads."""

    def __init__(self, per_minute: float):
        self.interval_s = 60.0 / per_minute
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until this caller's slot."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval_s
        if slot > now:
            time.sleep(slot - now)


def call_with_retries(
    fn: Callable[[], T],
    what: str,
    *,
    max_attempts: int,
    initial_s: float,
    max_s: float,
    retry_after_max_s: float,
    before_each: Callable[[], None] | None = None,
) -> T:
    """``fn()``, retried on 408/429/5xx and transport errors; ``before_each`` runs before every try.

    Raises:
        ServiceError: a non-retryable API error, or ``max_attempts`` tries all failed; the
            message names ``what``, the last HTTP status / error and the number of tries.
    """
    attempt = 0
    while True:
        attempt += 1
        if before_each:
            before_each()
        try:
            return fn()
        except STATUS_ERRORS as err:
            code, reason = _status(err)
            if code not in RETRYABLE_CODES and not 500 <= (code or 0) < 600:
                raise ServiceError(f"{what}: {reason}") from None
            delay = max(backoff_s(attempt, initial_s, max_s), min(retry_after_s(err) or 0.0, retry_after_max_s))
        except TRANSPORT_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            delay = backoff_s(attempt, initial_s, max_s)
        if attempt == max_attempts:
            raise ServiceError(f"{what}: {reason} (gave up after {max_attempts} tries)")
        log.warning("%s: %s; try %d/%d again in %.1f s", what, reason, attempt + 1, max_attempts, delay)
        time.sleep(delay)
