"""The bearer tokens of the endpoints beside the callback: the read API and /metrics."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from starlette.requests import Request

from webhook.errors import Unauthorized


class BearerToken:
    """Checks `Authorization: Bearer <token>`; the 401 names the setting that holds it."""

    def __init__(self, token: SecretStr, setting: str) -> None:
        # Digests of equal length are compared, so the time taken reveals nothing of the token,
        # not even its length (compare_digest leaks the lengths of what it compares).
        self._digest = hashlib.sha256(token.get_secret_value().encode()).digest()
        self._setting = setting

    def check(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        offered = hashlib.sha256(given.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, self._digest):
            raise Unauthorized(f"send Authorization: Bearer <{self._setting}>")
