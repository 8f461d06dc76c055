import time

import pytest

from webhook.errors import VerificationError
from webhook.signature import auth_key_refusal, sign, verify_signature

DOC_URL = "https://www.example.com/your/callback"
DOC_TIMESTAMP = "1519375990"
DOC_KEY = "test123"
DOC_SIGNATURE = "c72b60894140fa98920f1279219b7ed4"


def verify(signature: str | None, timestamp: str | None = DOC_TIMESTAMP, **kwargs: object) -> None:
    options: dict[str, object] = {
        "callback_url": DOC_URL,
        "auth_keys": [DOC_KEY],
        "now": float(DOC_TIMESTAMP),
        "max_skew_seconds": 300,
    }
    options.update(kwargs)
    verify_signature(timestamp=timestamp, signature=signature, **options)  # type: ignore[arg-type]


def rejection(
    signature: str | None, timestamp: str | None = DOC_TIMESTAMP, **kwargs: object
) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verify(signature, timestamp, **kwargs)
    return caught.value


def test_documented_worked_example() -> None:
    assert sign(DOC_URL, 1519375990, DOC_KEY) == DOC_SIGNATURE
    verify(DOC_SIGNATURE)


def test_hex_is_case_insensitive() -> None:
    verify(DOC_SIGNATURE.upper())


def test_signature_covers_the_registered_url_key_and_timestamp() -> None:
    assert (
        rejection(DOC_SIGNATURE, callback_url="https://www.example.com/your/callback/").code
        == "signature_mismatch"
    )
    assert rejection(DOC_SIGNATURE, auth_keys=["test124"]).code == "signature_mismatch"
    assert rejection(DOC_SIGNATURE, timestamp="1519375991").code == "signature_mismatch"


def test_any_configured_key_verifies_during_rotation() -> None:
    verify(DOC_SIGNATURE, auth_keys=["NewKey2024", DOC_KEY])
    verify(sign(DOC_URL, DOC_TIMESTAMP, "NewKey2024"), auth_keys=["NewKey2024", DOC_KEY])
    assert (
        rejection(sign(DOC_URL, DOC_TIMESTAMP, "Retired1"), auth_keys=["NewKey2024", DOC_KEY]).code
        == "signature_mismatch"
    )


@pytest.mark.parametrize(
    ("signature", "timestamp", "code"),
    [
        (DOC_SIGNATURE, None, "missing_timestamp"),
        (None, DOC_TIMESTAMP, "missing_signature"),
        (DOC_SIGNATURE, "151937599", "malformed_timestamp"),
        (DOC_SIGNATURE, "15193759900", "malformed_timestamp"),
        (DOC_SIGNATURE, "1519375990.5", "malformed_timestamp"),
        (DOC_SIGNATURE, "", "malformed_timestamp"),
        (DOC_SIGNATURE[:-1], DOC_TIMESTAMP, "malformed_signature"),
        (DOC_SIGNATURE + "0", DOC_TIMESTAMP, "malformed_signature"),
        ("z" * 32, DOC_TIMESTAMP, "malformed_signature"),
    ],
)
def test_malformed_headers(signature: str | None, timestamp: str | None, code: str) -> None:
    assert rejection(signature, timestamp).code == code


def test_skew_is_bounded_both_ways() -> None:
    now = float(DOC_TIMESTAMP)
    verify(DOC_SIGNATURE, now=now + 300)
    verify(DOC_SIGNATURE, now=now - 300)
    stale = rejection(DOC_SIGNATURE, now=now + 301)
    assert stale.code == "stale_timestamp"
    assert "301 s in the past" in stale.detail
    future = rejection(DOC_SIGNATURE, now=now - 301)
    assert future.code == "future_timestamp"
    assert "301 s in the future" in future.detail


def test_details_never_reveal_the_expected_signature() -> None:
    wrong = "0" * 32
    error = rejection(wrong)
    assert DOC_SIGNATURE not in error.detail
    assert DOC_KEY not in error.detail


def test_real_clock_accepts_a_fresh_signature() -> None:
    stamp = str(int(time.time()))
    verify(sign(DOC_URL, stamp, DOC_KEY), timestamp=stamp, now=time.time())


SHORT = (
    "at least 16 are needed, since one captured signature lets an attacker guess a short key "
    "offline"
)
MIXED = "must contain upper case letters, lower case letters and digits"


@pytest.mark.parametrize(
    ("key", "strict", "lenient"),
    [
        ("Rotate2026KeyAbcd", None, None),
        ("Sh0rtKey", f"has 8 characters; {SHORT}", None),
        ("lowercaseonly1234", MIXED, MIXED),
        ("lower1", f"has 6 characters; {SHORT}", MIXED),
        ("A1b" * 11, "must be at most 32 characters", "must be at most 32 characters"),
    ],
)
def test_a_key_to_register_is_refused_as_the_receiver_would(
    key: str, strict: str | None, lenient: str | None
) -> None:
    assert auth_key_refusal(key, allow_weak=False) == strict
    # ALLOW_WEAK_AUTH_KEYS lets a short key through, never one VOD itself refuses.
    assert auth_key_refusal(key, allow_weak=True) == lenient
