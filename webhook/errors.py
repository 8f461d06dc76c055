"""The errors a request can end in; app.py maps each to its HTTP answer in one place."""

from __future__ import annotations

from pydantic import ValidationError


def explain(exc: ValidationError, within: str = "") -> str:
    """A pydantic error in one line, field by field, e.g.
    `Video.Width: Input should be greater than or equal to 128; Status: Field required`."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in (within, *error["loc"]) if part != "")
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


class WebhookError(Exception):
    """An answer to the client: a stable machine-readable `code` and a human `detail`."""

    status_code = 500
    code = "internal_error"
    headers: dict[str, str] = {}  # noqa: RUF012 - read only, per class

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class VerificationError(WebhookError):
    """X-VOD-TIMESTAMP / X-VOD-SIGNATURE are missing, malformed, stale or do not match."""

    status_code = 401
    code = "signature_mismatch"


class BadRequest(WebhookError):
    """A request the API cannot make sense of (not a callback body)."""

    status_code = 400
    code = "invalid_request"


class Unauthorized(WebhookError):
    """The read API and /metrics need `Authorization: Bearer <token>` (webhook/bearer.py)."""

    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class NotFound(WebhookError):
    status_code = 404
    code = "not_found"


class PayloadError(WebhookError):
    """The body is not a VOD event we can record."""

    status_code = 400
    code = "invalid_event"


class PayloadTooLarge(WebhookError):
    status_code = 413
    code = "payload_too_large"


class RequestIncomplete(WebhookError):
    """The client went away, or was cut off for being too slow, before its body arrived."""

    status_code = 408
    code = "request_incomplete"


class StoreUnavailable(WebhookError):
    """Redis did not answer or failed: nothing was stored, so the sender must retry."""

    status_code = 503
    code = "store_unavailable"
    headers = {"Retry-After": "1"}  # noqa: RUF012


class TooManyStreams(WebhookError):
    """`VOD_WEBHOOK_MAX_EVENT_STREAMS` event streams are open: the read API must not starve
    callbacks."""

    status_code = 503
    code = "too_many_streams"
    headers = {"Retry-After": "10"}  # noqa: RUF012
