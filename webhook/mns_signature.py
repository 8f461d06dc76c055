"""MNS's request signature, pure functions: what a client signs and what a queue checks.

`Authorization: MNS <AccessKeyId>:<base64 HMAC-SHA1(secret, string to sign)>`, where the string
to sign is ``VERB\\nContent-MD5\\nContent-Type\\nDate\\n`` then every ``x-mns-*`` header as
``name:value\\n`` (lower-case names, sorted) then the resource: the path with its query, as sent.
This is what the official SDK (`aliyun-mns-sdk`, `MNSClient.get_signature`) computes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

MNS_VERSION = "2015-06-06"
SCHEME = "MNS"


def string_to_sign(method: str, headers: Mapping[str, str], resource: str) -> str:
    """`headers` with lower-case names; absent Content-MD5 and Content-Type sign as ""."""
    mns_headers = "".join(
        f"{name}:{headers[name]}\n" for name in sorted(headers) if name.startswith("x-mns-")
    )
    return (
        f"{method}\n{headers.get('content-md5', '')}\n{headers.get('content-type', '')}\n"
        f"{headers.get('date', '')}\n{mns_headers}{resource}"
    )


def signature(secret: str, method: str, headers: Mapping[str, str], resource: str) -> str:
    digest = hmac.new(
        secret.encode(), string_to_sign(method, headers, resource).encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode()


def authorization(
    access_key_id: str, secret: str, method: str, headers: Mapping[str, str], resource: str
) -> str:
    """The Authorization header's value for a request with these (lower-case) headers."""
    return f"{SCHEME} {access_key_id}:{signature(secret, method, headers, resource)}"


def parse_authorization(value: str) -> tuple[str, str] | None:
    """(AccessKeyId, signature) of an `MNS id:signature` header value; None if malformed."""
    scheme, _, credential = value.strip().partition(" ")
    access_key_id, colon, sent = credential.strip().partition(":")
    if scheme != SCHEME or not colon or not access_key_id or not sent:
        return None
    return access_key_id, sent
