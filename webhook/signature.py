"""VOD's callback authentication.

X-VOD-SIGNATURE = md5_hex("<CallbackURL>|<X-VOD-TIMESTAMP>|<AuthKey>"). The body is not
covered, so a small clock-skew window is the only replay bound.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from webhook.errors import VerificationError

_TIMESTAMP = re.compile(r"\d{10}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{32}")


def sign(callback_url: str, timestamp: int | str, auth_key: str) -> str:
    """The signature VOD sends for this URL (as registered), timestamp and key."""
    return hashlib.md5(f"{callback_url}|{timestamp}|{auth_key}".encode()).hexdigest()


def verify_signature(
    *,
    timestamp: str | None,
    signature: str | None,
    callback_url: str,
    auth_keys: Sequence[str],
    now: float,
    max_skew_seconds: int,
) -> None:
    """Raise VerificationError unless the headers were signed by one of `auth_keys` recently."""
    if timestamp is None:
        raise VerificationError("X-VOD-TIMESTAMP header is missing", "missing_timestamp")
    if signature is None:
        raise VerificationError("X-VOD-SIGNATURE header is missing", "missing_signature")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise VerificationError(
            "X-VOD-TIMESTAMP must be Unix time in seconds (10 digits)", "malformed_timestamp"
        )
    if not _SIGNATURE.fullmatch(signature):
        raise VerificationError(
            "X-VOD-SIGNATURE must be 32 hexadecimal characters", "malformed_signature"
        )
    skew = int(timestamp) - now
    if skew < -max_skew_seconds:
        raise VerificationError(
            f"X-VOD-TIMESTAMP is {int(-skew)} s in the past; at most {max_skew_seconds} s "
            "is accepted",
            "stale_timestamp",
        )
    if skew > max_skew_seconds:
        raise VerificationError(
            f"X-VOD-TIMESTAMP is {int(skew)} s in the future; at most {max_skew_seconds} s "
            "is accepted",
            "future_timestamp",
        )
    given = signature.lower().encode()
    # Compare against every key without stopping early, so timing reveals nothing either.
    matched = False
    for key in auth_keys:
        expected = sign(callback_url, timestamp, key).encode()
        matched |= hmac.compare_digest(given, expected)
    if not matched:
        raise VerificationError(
            "X-VOD-SIGNATURE does not match the configured callback URL and AuthKeys",
            "signature_mismatch",
        )


def callback_url_problem(url: str) -> str | None:
    """Why VOD would refuse this CallbackURL, or None."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "must be an http or https URL"
    if len(url.encode()) > 256:
        return "must be at most 256 bytes"
    return None


# md5 over a known URL and timestamp: one captured signature lets an attacker test keys offline
# at billions a second, so a key needs enough random characters that this never ends (16
# random letters and digits are ~95 bits).
MIN_AUTH_KEY_LENGTH = 16


def auth_key_weakness(key: str) -> str | None:
    """Why this AuthKey is too weak to verify callbacks with (or VOD would refuse it), or None."""
    if len(key) < MIN_AUTH_KEY_LENGTH:
        return (
            f"has {len(key)} characters; at least {MIN_AUTH_KEY_LENGTH} are needed, since one "
            "captured signature lets an attacker guess a short key offline"
        )
    return auth_key_problem(key)


def auth_key_problem(key: str) -> str | None:
    """Why VOD would refuse this AuthKey, or None."""
    if len(key) > 32:
        return "must be at most 32 characters"
    if not (re.search("[A-Z]", key) and re.search("[a-z]", key) and re.search("[0-9]", key)):
        return "must contain upper case letters, lower case letters and digits"
    return None


def auth_key_refusal(key: str, *, allow_weak: bool) -> str | None:
    """Why this AuthKey must not be registered with VOD, or None: what VOD refuses and, unless
    `allow_weak` (ALLOW_WEAK_AUTH_KEYS), what the receiver would refuse at start-up."""
    return auth_key_problem(key) if allow_weak else auth_key_weakness(key)
