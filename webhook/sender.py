"""`send-test`: post a correctly signed callback to a deployed receiver, as VOD would."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import httpx

from webhook.events import DYNAMIC_IMAGE_COMPLETE
from webhook.signature import sign


def sample_dynamic_image_event(job_id: str | None = None) -> dict[str, object]:
    """A successful DynamicImageComplete shaped like VOD's documented sample."""
    job_id = job_id or uuid.uuid4().hex
    return {
        "EventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "EventType": DYNAMIC_IMAGE_COMPLETE,
        "VideoId": "send-test-video",
        "Status": "success",
        "JobId": job_id,
        "DynamicImageJobInfo": json.dumps(
            {
                "JobId": job_id,
                "Status": "success",
                "FileURL": f"https://example.com/dynamic-image/{job_id}.gif",
                "FileSize": "102400",
                "Fps": "10",
                "Width": "320",
                "Height": "180",
            }
        ),
    }


def signed_headers(
    callback_url: str, auth_key: str, timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-VOD-TIMESTAMP": stamp,
        "X-VOD-SIGNATURE": sign(callback_url, stamp, auth_key),
    }


def send_callback(
    url: str, body: bytes, *, auth_key: str, callback_url: str | None = None, timeout: float = 5.0
) -> httpx.Response:
    """POST `body` to `url`, signed for `callback_url` (the URL as registered; default `url`)."""
    headers = signed_headers(callback_url or url, auth_key)
    return httpx.post(url, content=body, headers=headers, timeout=timeout)
