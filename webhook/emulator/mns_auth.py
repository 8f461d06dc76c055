"""MNS's request authentication: the version header, the Date, the `MNS id:signature` header.

Checked in MNS's order and with its answers: the API version, then the Authorization header's
presence and form, the Date (at most 15 minutes off, either way), the AccessKeyId, and last the
signature itself (webhook/mns_signature.py, as the official SDK computes it).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from starlette.requests import Request

from webhook.emulator.mns_xml import MnsError
from webhook.mns_signature import MNS_VERSION, parse_authorization, signature

# MNS refuses a request whose Date is further than this from its clock.
MAX_CLOCK_SKEW_SECONDS = 15 * 60


def check_date(value: str | None, now: datetime) -> None:
    if not value:
        raise MnsError(400, "MissingDateHeader", "Date header is required.")
    try:
        sent = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        sent = None
    if sent is None or sent.tzinfo is None:
        raise MnsError(
            400,
            "InvalidDateHeader",
            "The Date header format is invalid (RFC 1123 in GMT: Sun, 06 Dec 2026 10:00:00 GMT).",
        )
    if abs((now - sent).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
        raise MnsError(
            408, "TimeExpired", "The http request you sent is expired (Date is 15 min off or more)."
        )


class MnsAuthenticator:
    """Admits a request signed with one of these AccessKey pairs."""

    def __init__(self, access_keys: Mapping[str, str]) -> None:
        self._access_keys = access_keys

    def authenticate(self, request: Request) -> str:
        """The caller's AccessKeyId, once the request checks out."""
        headers = dict(request.headers.items())
        if headers.get("x-mns-version") != MNS_VERSION:
            # What MNS answers when the version does not fit the URL (its InvalidRequestURL FAQ).
            raise MnsError(
                400,
                "InvalidRequestURL",
                f"Http request URL format invalid (x-mns-version must be {MNS_VERSION}).",
            )
        authorization = headers.get("authorization")
        if not authorization:
            raise MnsError(400, "MissingAuthorizationHeader", "Authorization header is required.")
        credential = parse_authorization(authorization)
        if credential is None:
            raise MnsError(
                400,
                "InvalidAuthorizationHeader",
                "The Authorization header format is invalid (MNS AccessKeyId:Signature).",
            )
        check_date(headers.get("date"), datetime.now(UTC))
        access_key_id, sent = credential
        secret = self._access_keys.get(access_key_id)
        if secret is None:
            raise MnsError(403, "InvalidAccessKeyId", "The AccessKey Id you provided is not exist.")
        # The resource is signed as sent: the raw path and query, before any decoding.
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string", b"")
        resource = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        expected = signature(secret, request.method, headers, resource)
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise MnsError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            )
        return access_key_id
