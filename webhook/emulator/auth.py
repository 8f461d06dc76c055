"""POP's request authentication: ACS3-HMAC-SHA256 as the SDK signs, the request date, the nonce.

The signature is computed as ``alibabacloud_tea_openapi.utils.Utils.get_authorization`` does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

from starlette.requests import Request

from webhook.emulator.errors import (
    PopError,
    incomplete_signature,
    missing_parameter,
    signature_mismatch,
)

SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"
# POP refuses a request whose x-acs-date is further than this from its clock, either way.
MAX_CLOCK_SKEW_SECONDS = 15 * 60
# The headers a request must carry and sign; the SDK signs every header it sets.
_SIGNED_HEADERS_REQUIRED = (
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
)
_AUTHORIZATION = re.compile(
    r"(?P<algorithm>\S+) Credential=(?P<key>[^,\s]+),\s*"
    r"SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]{64})"
)


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Authorization:
    if not value:
        raise missing_parameter("Authorization")
    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise incomplete_signature("the Authorization header is malformed")
    if match["algorithm"] != SIGNATURE_ALGORITHM:
        raise incomplete_signature(f"only {SIGNATURE_ALGORITHM} is supported")
    return Authorization(
        access_key_id=match["key"],
        signed_headers=tuple(match["headers"].lower().split(";")),
        signature=match["signature"].lower(),
    )


def canonical_request(
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, list[str]],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> str:
    canonical_query = "&".join(f"{key}={quote(query[key], safe='~')}" for key in sorted(query))
    # A header sent more than once is signed as its sorted, comma-joined values.
    canonical_headers = "".join(
        f"{name}:{','.join(sorted(value.strip() for value in headers.get(name, [])))}\n"
        for name in signed_headers
    )
    return "\n".join(
        [method, path or "/", canonical_query, canonical_headers, ";".join(signed_headers),
         payload_hash]
    )  # fmt: skip


def request_signature(secret: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{SIGNATURE_ALGORITHM}\n{digest}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def check_request_date(value: str, now: datetime) -> None:
    try:
        sent = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise PopError(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        ) from None
    if abs((now - sent).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
        raise PopError(
            400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
        )


class NonceRegister:
    """The signature nonces seen while a request carrying them could still be accepted."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()

    def use(self, access_key_id: str, nonce: str) -> bool:
        """Record the nonce; False if it was already used."""
        now = time.monotonic()
        # Entries expire in insertion order, so the oldest are always at the front.
        while self._expiry and next(iter(self._expiry.values())) <= now:
            self._expiry.popitem(last=False)
        key = (access_key_id, nonce)
        if key in self._expiry:
            return False
        self._expiry[key] = now + self.ttl
        return True


class Authenticator:
    """Admits a request signed with one of these AccessKey pairs, once (per nonce)."""

    def __init__(self, access_keys: Mapping[str, str]) -> None:
        self._access_keys = access_keys
        # A nonce must stay remembered as long as its x-acs-date is still accepted.
        self._nonces = NonceRegister(2 * MAX_CLOCK_SKEW_SECONDS)

    async def authenticate(self, request: Request) -> tuple[str, dict[str, str]]:
        """The caller's AccessKeyId and the request's parameters, once its signature checks out."""
        authorization = parse_authorization(request.headers.get("authorization"))
        for name in _SIGNED_HEADERS_REQUIRED:
            if not request.headers.get(name):
                raise missing_parameter(name)
            if name not in authorization.signed_headers:
                raise incomplete_signature(f"the {name} header must be signed")
        check_request_date(request.headers["x-acs-date"], datetime.now(UTC))
        secret = self._access_keys.get(authorization.access_key_id)
        if secret is None:
            raise PopError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        body = await request.body()
        payload_hash = request.headers["x-acs-content-sha256"].lower()
        if not hmac.compare_digest(payload_hash, hashlib.sha256(body).hexdigest()):
            raise signature_mismatch("x-acs-content-sha256 is not the hash of the body")
        query = dict(parse_qsl(request.url.query, keep_blank_values=True))
        canonical = canonical_request(
            method=request.method,
            path=request.url.path,
            query=query,
            headers={name: request.headers.getlist(name) for name in authorization.signed_headers},
            signed_headers=authorization.signed_headers,
            payload_hash=payload_hash,
        )
        if not hmac.compare_digest(authorization.signature, request_signature(secret, canonical)):
            raise signature_mismatch("the AccessKeySecret or the signed content differs")
        # Only a verified request spends its nonce, so nobody can burn someone else's.
        if not self._nonces.use(
            authorization.access_key_id, request.headers["x-acs-signature-nonce"]
        ):
            raise PopError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
        params = query
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params = {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}
        return authorization.access_key_id, params
