"""The counters kept in Redis: their fields stay few whatever VOD answers, and reading them
ignores what does not fit."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from webhook.keys import Keys
from webhook.stats import (
    QuotaUse,
    ReconcilePasses,
    SubmissionCount,
    count_reconcile_pass,
    count_submission,
    quota_uses,
    reconcile_passes,
    submission_counts,
    submission_field,
)
from webhook.vod import VodError

KEYS = Keys("vod")


@pytest.mark.parametrize(
    ("outcome", "code", "field"),
    [
        ("submitted", "", "submitted|"),
        ("throttled", "Throttling.User", "throttled|Throttling.User"),
        ("refused", "InvalidVideo.NotFound", "refused|InvalidVideo.NotFound"),
        ("failed", "NetworkError", "failed|NetworkError"),
        ("refused", "<script>", "refused|other"),
        ("refused", "A" * 65, "refused|other"),
        ("refused", "bad|pipe", "refused|other"),
    ],
)
def test_submission_fields_are_bounded(outcome: str, code: str, field: str) -> None:
    assert submission_field(outcome, code) == field


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (VodError("Throttling.User", "slow down", status_code=400), "throttled"),
        (VodError("InternalError", "oops", status_code=500), "failed"),
        (VodError("NetworkError", "unreachable"), "failed"),
        (VodError("InvalidVideo.NotFound", "no such video", status_code=404), "refused"),
    ],
)
def test_a_vod_error_is_counted_by_what_it_means(error: VodError, outcome: str) -> None:
    assert error.outcome == outcome


def test_reading_ignores_fields_of_another_shape() -> None:
    fields = {
        "submitted|": "3",
        "refused|InvalidVideo.NotFound": "1",
        "throttled|Throttling.User": "2",
        "nonsense": "9",
        "exploded|": "1",
        "failed|NetworkError": "not a number",
    }
    assert submission_counts(fields) == [
        SubmissionCount("submitted", "", 3),
        SubmissionCount("throttled", "Throttling.User", 2),
        SubmissionCount("refused", "InvalidVideo.NotFound", 1),
    ]
    quota = {
        "acct|calls": "4",
        "acct|wait_us": "1500000",
        "acct|tat_us": "10000000",
        "acct|interval_us": "34014",
        "acct:ListDynamicImage|calls": "1",
        "junk": "x",
    }
    assert quota_uses(quota, now_us=9_500_000) == [
        QuotaUse("acct", 29.4, 4, 1.5, 0.5),
        QuotaUse("acct:ListDynamicImage", 0.0, 1, 0.0, 0.0),
    ]
    assert reconcile_passes({"passes": "2", "last_pass_ms": "5", "junk": "x"}) == ReconcilePasses(
        passes=2, last_pass_ms=5
    )


async def test_counts_add_up_in_redis(redis_client: Redis) -> None:
    await count_submission(redis_client, KEYS, "refused", "InvalidVideo.NotFound")
    await count_submission(redis_client, KEYS, "refused", "InvalidVideo.NotFound")
    for at_ms in (1000, 2000):
        await count_reconcile_pass(
            redis_client, KEYS, recovered=1, timed_out=0, at_ms=at_ms, interval_seconds=None
        )
    fields: dict[str, str] = await redis_client.hgetall(KEYS.submission_stats)  # type: ignore[assignment]
    assert submission_counts(fields) == [SubmissionCount("refused", "InvalidVideo.NotFound", 2)]
    fields = await redis_client.hgetall(KEYS.reconcile_stats)  # type: ignore[assignment]
    passes = reconcile_passes(fields)
    assert passes == ReconcilePasses(passes=2, recovered=2, timed_out=0, last_pass_ms=2000)


async def test_a_count_redis_cannot_take_is_lost_quietly() -> None:
    unreachable = Redis(port=1, socket_connect_timeout=0.5)
    await count_submission(unreachable, KEYS, "failed", "NetworkError")  # no error
    await unreachable.aclose()
