"""Verifying callback outcomes with ListDynamicImage before they are published (VERIFY_OUTCOMES).

VOD signs the callback URL and a timestamp, not the body: whoever saw one signed request can
post any body while its timestamp is accepted. With verification on, the receiver holds a job
outcome in Redis (`Store.hold`, before its 200) and this loop publishes it only once
ListDynamicImage agrees:

- success, listed with the same file (`same_file`): recorded with `verified: true`;
- success, listed with another file; or fail, but the job is listed (it succeeded): VOD
  contradicts it, so it is forged, logged `callback_forged` and dropped;
- anything short of a contradiction is recorded with `verified: false`, never dropped, since
  we answered 200 for it: a success not listed after every check (listing lag, or forged), an
  outcome for a video VOD does not know (deleted, or this receiver looks in another region or
  account), a fail not listed (ListDynamicImage cannot show failures), VOD out of reach for
  every check. A confirmed outcome still supersedes an unconfirmed one.

Each body is held under its own fingerprint, so a forged one never takes the real one's place.
Held outcomes wait in a sorted set by due time; a process claims due ones for a lease, so each
is checked by one process at a time, and one whose process died is checked again after the
lease. Pending checks survive restarts: they live in Redis. With verification turned off,
`drain_held` publishes what is still held (unverified) through the same claims.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import ValidationError

from webhook.errors import StoreUnavailable
from webhook.events import Envelope
from webhook.keys import Keys
from webhook.store import Store, script_source, unavailable
from webhook.vod import DynamicImage, Vod, VodError

logger = structlog.get_logger("webhook.verify")

_VIDEO_UNKNOWN = {"InvalidVideo.NotFound", "NoSuchResource"}
_VERIFY_SETTING = "VOD_WEBHOOK_VERIFY_OUTCOMES"
_DRAIN_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class VerifyOptions:
    attempts: int = 12
    """Checks of one held outcome before the verdict for "not listed" / "VOD out of reach";
    the default spans about 3.5 minutes, for ListDynamicImage to catch up with the callback."""
    base_delay: float = 1.0
    """Seconds before the second check; doubled for each further one, up to `max_delay`."""
    max_delay: float = 30.0
    lease_seconds: float = 120.0
    """How long a claimed outcome is this process's; longer than one lookup with its retries."""
    batch: int = 50
    poll_seconds: float = 0.25

    def delay(self, attempt: int) -> float:
        """Seconds from check number `attempt` (0 for the first) to the next one."""
        return min(self.max_delay, self.base_delay * 2.0**attempt)


def same_file(claimed: str | None, listed: Any) -> bool:
    """Whether two FileURLs name the same file: the host (in any case, with any non-default
    port) and the path. The scheme and query do not count: VOD's callbacks always say http://
    and CDN URL signing adds an `auth_key` query, where ListDynamicImage may differ."""
    if not claimed or not isinstance(listed, str):
        return False
    try:
        a, b = urlsplit(claimed), urlsplit(listed)
        ports = [None if url.port in {80, 443} else url.port for url in (a, b)]
    except ValueError:  # an impossible port
        return False
    return (
        a.hostname is not None
        and a.hostname == b.hostname
        and ports[0] == ports[1]
        and (unquote(a.path) or "/") == (unquote(b.path) or "/")
    )


@dataclass(frozen=True)
class _Held:
    fingerprint: str
    envelope: Envelope
    attempts: int
    keys: Keys
    """Its partition's (held outcomes are kept in their job's partition)."""


class Verifier:
    """Checks held outcomes with `vod`; with `vod` None (verification off) it publishes them
    unverified."""

    def __init__(self, store: Store, vod: Vod | None, options: VerifyOptions | None = None) -> None:
        self.store = store
        self.vod = vod
        self.options = options or VerifyOptions()
        self._claim = store.redis.register_script(script_source("claim_due"))

    async def run_once(self) -> int:
        """Check every held outcome that is due, one lookup per video; returns how many."""
        held = await self._claim_due()
        vod = self.vod
        if vod is None:
            for item in held:
                await self._record(item, verified=False, reason=f"{_VERIFY_SETTING} is off")
            return len(held)
        by_video: dict[str, list[_Held]] = defaultdict(list)
        for item in held:
            by_video[item.envelope.video_id or ""].append(item)
        for video_id, items in by_video.items():
            listed: dict[str, DynamicImage] | None = None
            error: VodError | None = None
            try:
                listed = {i.job_id: i for i in await vod.list_dynamic_image(video_id)}
            except VodError as exc:
                error = exc
            for item in items:
                await self._decide(item, listed, error)
        return len(held)

    async def _claim_due(self) -> list[_Held]:
        """Up to `batch` due outcomes of each partition."""
        return [item for keys in self.store.layout.keys for item in await self._claim_in(keys)]

    async def _claim_in(self, keys: Keys) -> list[_Held]:
        redis = self.store.redis
        lease_ms = int(self.options.lease_seconds * 1000)
        with unavailable():
            fingerprints = [
                str(f)
                for f in await self._claim(
                    keys=[keys.verify_queue], args=[lease_ms, self.options.batch]
                )
            ]
            async with redis.pipeline(transaction=False) as pipe:
                for fingerprint in fingerprints:
                    pipe.hmget(keys.held(fingerprint), "envelope", "attempts")
                rows = await pipe.execute()
        held, gone = [], []
        for fingerprint, (body, attempts) in zip(fingerprints, rows, strict=True):
            try:
                envelope = Envelope.model_validate_json(body) if body is not None else None
            except ValidationError:
                envelope = None
            if envelope is None:  # resolved, expired, or not ours to read: nothing to check
                gone.append(fingerprint)
            else:
                held.append(_Held(fingerprint, envelope, int(attempts or 0), keys))
        if gone:
            with unavailable():
                await redis.zrem(keys.verify_queue, *gone)
        return held

    async def _decide(
        self, item: _Held, listed: dict[str, DynamicImage] | None, error: VodError | None
    ) -> None:
        envelope = item.envelope
        last_try = item.attempts + 1 >= self.options.attempts
        if error is not None and error.code in _VIDEO_UNKNOWN:
            # Not a contradiction of the outcome: the video may be deleted since, or this
            # receiver may look in another region or account. Asking again would not help.
            reason = f"VOD does not know video {envelope.video_id} ({error.code})"
            await self._record(item, verified=False, reason=reason)
        elif error is not None or listed is None:
            if last_try:
                await self._record(item, verified=False, reason=f"VOD out of reach: {error}")
            else:
                await self._retry(item, f"VOD out of reach: {error}")
        elif envelope.status == "success":
            image = listed.get(envelope.job_id or "")
            claimed_url = envelope.result.file_url if envelope.result else None
            if image is None and not last_try:
                await self._retry(item, "not listed by ListDynamicImage yet")
            elif image is None:
                # Listing lag or a forgery: no contradiction, and we answered 200 for it.
                reason = f"not listed by ListDynamicImage after {self.options.attempts} checks"
                await self._record(item, verified=False, reason=reason)
            elif not same_file(claimed_url, image.raw.get("FileURL")):
                await self._forged(item, "FileURL differs from ListDynamicImage's")
            else:
                await self._record(item, verified=True)
        elif (envelope.job_id or "") in listed:
            await self._forged(item, "ListDynamicImage lists the job as successful")
        else:
            await self._record(
                item, verified=False, reason="ListDynamicImage cannot show a failed job"
            )

    async def _record(self, item: _Held, *, verified: bool, reason: str | None = None) -> None:
        recorded = await self.store.record(item.envelope.model_copy(update={"verified": verified}))
        # Only now is the held copy let go: a crash before this line means one more check and
        # a duplicate, never a loss.
        await self._resolve(item, "recorded")
        log = logger.info if verified else logger.warning
        log(
            "outcome_verified" if verified else "outcome_unconfirmed",
            job_id=item.envelope.job_id,
            status=item.envelope.status,
            id=recorded.id,
            duplicate=recorded.duplicate,
            reason=reason,
        )

    async def _forged(self, item: _Held, reason: str) -> None:
        await self._resolve(item, "forged")
        envelope = item.envelope
        logger.warning(
            "callback_forged",
            job_id=envelope.job_id,
            video_id=envelope.video_id,
            status=envelope.status,
            file_url=envelope.result.file_url if envelope.result else None,
            reason=reason,
        )

    async def _retry(self, item: _Held, reason: str) -> None:
        options = self.options
        delay = options.delay(item.attempts)
        redis, keys = self.store.redis, item.keys
        with unavailable():
            # Due `delay` from now on Redis's clock, as the claim script reads it.
            seconds, micros = await redis.time()
            due_ms = seconds * 1000 + micros // 1000 + int(delay * 1000)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(keys.held(item.fingerprint), "attempts", 1)
                pipe.zadd(keys.verify_queue, {item.fingerprint: due_ms}, xx=True)
                await pipe.execute()
        logger.info(
            "verify_retry",
            job_id=item.envelope.job_id,
            attempt=item.attempts + 1,
            delay_s=delay,
            reason=reason,
        )

    async def _resolve(self, item: _Held, state: str) -> None:
        """Leave a small tombstone, so a re-send of the same body is a duplicate, not re-held."""
        keys = item.keys
        with unavailable():
            async with self.store.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.held(item.fingerprint), "envelope")
                pipe.hset(keys.held(item.fingerprint), "state", state)
                pipe.zrem(keys.verify_queue, item.fingerprint)
                await pipe.execute()


async def drain_held(store: Store, options: VerifyOptions | None = None) -> None:
    """With verification off: publish, unverified, every outcome a verifying deployment left
    held (each was answered 200), then end. Leased ones wait for their lease to end, so a
    process still verifying keeps the ones it is checking."""
    verifier = Verifier(store, None, options)
    announced = False
    while True:
        checked = 0
        try:
            with unavailable():
                held = await store.held_count()
            if not held:
                return
            if not announced:
                logger.warning(
                    "held_outcomes_draining", held=held, reason=f"{_VERIFY_SETTING} is off"
                )
                announced = True
            checked = await verifier.run_once()
        except StoreUnavailable as exc:
            # Every `serve` without verification starts this: no flood of warnings while Redis
            # is down, just a look every few seconds.
            logger.warning("drain_skipped", detail=exc.detail)
            await asyncio.sleep(_DRAIN_RETRY_SECONDS)
        except Exception:
            logger.exception("drain_failed")
            await asyncio.sleep(_DRAIN_RETRY_SECONDS)
        if checked < verifier.options.batch:
            await asyncio.sleep(verifier.options.poll_seconds)


async def run_verifier(store: Store, vod: Vod, options: VerifyOptions | None = None) -> None:
    """Check held outcomes until cancelled; idle, it looks again every `poll_seconds`."""
    verifier = Verifier(store, vod, options)
    while True:
        checked = 0
        try:
            checked = await verifier.run_once()
        except StoreUnavailable as exc:
            logger.warning("verify_skipped", detail=exc.detail)
        except Exception:
            # A failure of one pass must not end verification for good.
            logger.exception("verify_failed")
        if checked < verifier.options.batch:
            await asyncio.sleep(verifier.options.poll_seconds)
