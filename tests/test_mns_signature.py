"""MNS's request signature: the same as the official SDK's, header for header."""

from __future__ import annotations

import pytest
from mns.mns_client import MNSClient

from webhook.mns_signature import authorization, parse_authorization, string_to_sign


class _Credential:
    """What the SDK's get_signature reads a key from."""

    def get_access_key_id(self) -> str:
        return "LTAI5tExampleKey"

    def get_access_key_secret(self) -> str:
        return "example-secret"

    def get_security_token(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("method", "headers", "resource"),
    [
        (
            "GET",
            {"date": "Sat, 05 Dec 2026 23:00:00 GMT", "x-mns-version": "2015-06-06"},
            "/queues/vod-events/messages?numOfMessages=16&waitseconds=30",
        ),
        (
            "DELETE",
            {
                "content-md5": "ZDQxZDhjZDk4ZjAwYjIwNGU5ODAwOTk4ZWNmODQyN2U=",
                "content-type": "text/xml;charset=UTF-8",
                "date": "Sat, 05 Dec 2026 23:00:01 GMT",
                "x-mns-version": "2015-06-06",
                "x-mns-user-request-id": "abc",
                "host": "1234.mns.cn-shanghai.aliyuncs.com",
            },
            "/queues/vod-events/messages",
        ),
        (
            "PUT",
            {"date": "Sat, 05 Dec 2026 23:00:02 GMT", "x-mns-version": "2015-06-06"},
            "/queues/q/messages?ReceiptHandle=1-ODU4OTkzNDU5My0xNDM=&VisibilityTimeout=4",
        ),
    ],
)
def test_signs_as_the_official_sdk(method: str, headers: dict[str, str], resource: str) -> None:
    sdk = MNSClient("http://127.0.0.1:1", "LTAI5tExampleKey", "example-secret")
    expected = sdk.get_signature(method, headers, resource, _Credential())
    assert authorization("LTAI5tExampleKey", "example-secret", method, headers, resource) == (
        expected
    )


def test_the_string_to_sign_orders_the_mns_headers_and_ends_with_the_resource() -> None:
    headers = {"x-mns-version": "2015-06-06", "date": "D", "x-mns-a": "1", "host": "h"}
    assert string_to_sign("GET", headers, "/queues/q") == (
        "GET\n\n\nD\nx-mns-a:1\nx-mns-version:2015-06-06\n/queues/q"
    )


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("MNS LTAI5t:c2lnbmF0dXJl", ("LTAI5t", "c2lnbmF0dXJl")),
        ("MNS LTAI5t:", None),
        ("MNS :sig", None),
        ("ACS3-HMAC-SHA256 Credential=x", None),
        ("", None),
    ],
)
def test_parse_authorization(value: str, parsed: tuple[str, str] | None) -> None:
    assert parse_authorization(value) == parsed
