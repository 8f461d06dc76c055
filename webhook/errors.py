"""The errors a request can end in; app.py maps each to its HTTP answer in one place."""

from __future__ import annotations


class WebhookError(Exception):
    """An answer to the client: a stable machine-readable `code` and a human `detail`."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class VerificationError(WebhookError):
    """X-VOD-TIMESTAMP / X-VOD-SIGNATURE are missing, malformed, stale or do not match."""

    status_code = 401
    code = "signature_mismatch"


class PayloadError(WebhookError):
    """The body is not a VOD event we can record."""

    status_code = 400
    code = "invalid_event"


class PayloadTooLarge(WebhookError):
    status_code = 413
    code = "payload_too_large"


class StoreUnavailable(WebhookError):
    """Redis did not answer or failed: nothing was stored, so the sender must retry."""

    status_code = 503
    code = "store_unavailable"
