"""The `vod-webhook` command when Redis goes away: real subprocesses, a redis-server of the
test's own that it restarts, closed ports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from redis.asyncio import Redis

from tests.conftest import RedisServer, free_port, wait_for
from tests.processes import env_for, listening, run
from tests.test_client import job_event
from webhook.store import Store


def record(url: str, job_id: str) -> None:
    async def go() -> None:
        redis = Redis.from_url(url, decode_responses=True)
        store = Store(redis, prefix="vod", stream_maxlen=1000, dedup_ttl_seconds=3600)
        try:
            await store.record(job_event(job_id))
        finally:
            await store.close()

    asyncio.run(go())


def test_durable_listen_goes_on_after_redis_restarts_empty(own_redis: RedisServer) -> None:
    server = own_redis
    with listening("--group", "billing", "--consumer", "c1", redis_url=server.url) as listener:
        record(server.url, "before")
        wait_for(lambda: len(listener.stdout) == 1, 10, "the first envelope")
        server.stop()  # no persistence: the group and the stream are gone
        server.start()
        record(server.url, "after")
        wait_for(lambda: len(listener.stdout) == 2, 20, "the envelope after the restart")
        assert listener.popen.poll() is None
    assert listener.popen.returncode == 0
    assert [json.loads(line)["job_id"] for line in listener.stdout] == ["before", "after"]
    events = [log["event"] for log in listener.json_logs()]
    assert events.count("consumer_group_recreated") == 1
    assert "Traceback" not in "".join(listener.stderr)


def test_submit_from_file_with_redis_down_says_so_and_submits_nothing(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"video_id": "v1", "template_id": "t"}\n{"video_id": "v2", "template_id": "t"}\n'
    )
    port = free_port()
    result = run(
        "submit", "--from-file", str(jobs), env=env_for(redis_url=f"redis://127.0.0.1:{port}/0")
    )
    assert result.returncode == 1
    assert f"Redis at redis://127.0.0.1:{port}/0 is unavailable" in result.stderr
    assert "nothing was submitted" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ExceptionGroup" not in result.stderr
    assert result.stdout == ""
