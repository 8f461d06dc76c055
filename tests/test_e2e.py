"""End to end in real processes: emulator + serve (reconciling) + submit + listen + jobs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.conftest import AUTH_KEY, free_port, wait_for
from tests.processes import emulating, emulator_jobs, env_for, listening, run, serving


def test_every_job_gets_one_correlated_envelope_despite_dropped_and_repeated_callbacks(
    redis_url: str, tmp_path: Path
) -> None:
    emulator_port = free_port()
    with (
        serving(
            redis_url=redis_url,
            vod_endpoint=f"http://127.0.0.1:{emulator_port}",
            reconcile="true",
            reconcile_interval_seconds="0.5",
            reconcile_grace_seconds="2",
        ) as (receiver, _),
        emulating(
            "--callback-url", f"{receiver}/callbacks/vod", "--auth-key", AUTH_KEY,
            "--delay", "0.3", "--drop-rate", "0.3", "--duplicate-rate", "0.3", "--seed", "7",
            port=emulator_port,
        ) as (emulator, _),
        listening(redis_url=redis_url) as listener,
    ):  # fmt: skip
        jobs_file = tmp_path / "jobs.jsonl"
        jobs_file.write_text(
            "\n".join(
                json.dumps(
                    {"video_id": f"video-{n % 4}", "template_id": "tpl", "tags": {"n": str(n)}}
                )
                for n in range(12)
            )
        )
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        submitted = run("submit", "--from-file", str(jobs_file), env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_ids = submitted.stdout.split()
        assert len(set(job_ids)) == 12
        assert "submitted 12, already submitted 0, failed 0" in submitted.stderr

        def envelopes() -> list[dict[str, object]]:
            return [json.loads(line) for line in listener.stdout]

        wait_for(lambda: {e["job_id"] for e in envelopes()} >= set(job_ids), 30, "every outcome")
        faults = {job["job_id"]: job for job in emulator_jobs(emulator)}

    correlated = Counter(e["job_id"] for e in envelopes() if e["submission"] is not None)
    assert correlated == dict.fromkeys(job_ids, 1)
    by_job = {e["job_id"]: e for e in envelopes()}
    dropped = [j for j in job_ids if faults[j]["callback"] == "dropped_by_fault"]
    repeated = [j for j in job_ids if faults[j]["deliveries"] == 2]
    assert dropped, "the seed drops some callbacks"
    assert repeated, "the seed repeats some callbacks"
    assert all(by_job[j]["source"] == "reconcile" for j in dropped)
    assert all(by_job[j]["source"] == "callback" for j in job_ids if j not in dropped)
    assert all(by_job[j]["status"] == "success" for j in job_ids)
    assert {by_job[j]["submission"]["tags"]["n"] for j in job_ids} == {str(n) for n in range(12)}  # type: ignore[index]

    again = run("submit", "--from-file", str(jobs_file), env=env)
    assert again.returncode == 0
    assert "submitted 0, already submitted 12, failed 0" in again.stderr
    pending = run("jobs", "pending", "--json", env=env_for(redis_url=redis_url))
    assert json.loads(pending.stdout) == []
    shown = run("jobs", "show", job_ids[0], "--json", env=env_for(redis_url=redis_url))
    view = json.loads(shown.stdout)
    assert view["status"] == "success"
    assert view["submission"]["template_id"] == "tpl"
    assert view["latency_ms"] >= 0
    assert view["result"]["file_url"].startswith("http")


def test_submit_wait_prints_the_final_envelope(redis_url: str) -> None:
    emulator_port = free_port()
    with (
        serving(redis_url=redis_url) as (receiver, _),
        emulating("--callback-url", f"{receiver}/callbacks/vod", "--auth-key", AUTH_KEY,
                  "--delay", "0.2", port=emulator_port),
    ):  # fmt: skip
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        waited = run("submit", "--video-id", "v1", "--template-id", "t1", "--tag", "team=ads",
                     "--override-params", '{"Video": {"Width": 256}}', "--wait", env=env)  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        envelope = json.loads(waited.stdout)
        assert envelope["status"] == "success"
        assert envelope["result"]["width"] == 256
        assert envelope["submission"]["tags"] == {"team": "ads"}
        assert envelope["job_id"] in waited.stderr

        plain = run("submit", "--video-id", "v1", "--template-id", "t1", env=env)
        assert plain.returncode == 0
        assert len(plain.stdout.strip()) == 32
        as_json = json.loads(
            run("submit", "--video-id", "v2", "--template-id", "t1", "--json", env=env).stdout
        )
        assert as_json["video_id"] == "v2"
        assert len(as_json["job_id"]) == 32


def test_submit_errors_are_clear_and_spend_no_quota(redis_url: str, tmp_path: Path) -> None:
    emulator_port = free_port()
    with emulating("--delay", "0.1", port=emulator_port) as (emulator, _):
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        cases = [
            (["--video-id", "v"], 2, "give --video-id and --template-id"),
            (
                ["--video-id", "v", "--template-id", "t", "--override-params", "[1]"],
                2,
                "must be a JSON object",
            ),
            (
                [
                    "--video-id",
                    "v",
                    "--template-id",
                    "t",
                    "--override-params",
                    '{"Video": {"Fps": 0}}',
                ],
                2,
                "OverrideParams.Video.Fps",
            ),
            (
                ["--video-id", "v", "--template-id", "t", "--override-params", "@/nonexistent"],
                2,
                "No such file",
            ),
            (["--video-id", "v", "--template-id", "t", "--tag", "novalue"], 2, "is not K=V"),
            (["--from-file", str(tmp_path / "missing.jsonl")], 2, "cannot read"),
        ]
        for args, code, message in cases:
            result = run("submit", *args, env=env)
            assert (result.returncode, message in result.stderr) == (code, True), result.stderr
            assert "Traceback" not in result.stderr
        assert emulator_jobs(emulator) == []

        refused = run("submit", "--video-id", "notfound-9", "--template-id", "t", env=env)
        assert refused.returncode == 1
        assert "InvalidVideo.NotFound" in refused.stderr
        assert "request id" in refused.stderr

        no_credentials = env_for(
            redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}"
        )
        del no_credentials["ALIBABA_CLOUD_ACCESS_KEY_ID"]
        missing = run("submit", "--video-id", "v", "--template-id", "t", env=no_credentials)
        assert missing.returncode == 2
        assert "no Alibaba Cloud credentials" in missing.stderr

        never = run(
            "submit", "--video-id", "v", "--template-id", "t", "--wait", "--timeout", "1", env=env
        )
        assert never.returncode == 3  # nothing receives the callback here
        assert "no outcome for job" in never.stderr


def test_register_configures_the_callback_through_the_api(redis_url: str) -> None:
    emulator_port = free_port()
    with emulating(port=emulator_port):
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        registered = run("register", "--callback-url", "https://hooks.example.com/callbacks/vod",
                         "--auth-key", "Rotate2026KeyAbcd", env=env)  # fmt: skip
        assert registered.returncode == 0, registered.stderr
        assert "https://hooks.example.com/callbacks/vod" in registered.stdout
        shown = json.loads(run("register", "--show", env=env).stdout)
        assert shown["CallbackURL"] == "https://hooks.example.com/callbacks/vod"
        assert shown["AuthSwitch"] == "on"
        assert shown["EventTypeList"] == "DynamicImageComplete"
        assert shown["AuthKey"] == "Ro***"
        weak = run(
            "register",
            "--callback-url",
            "https://h.example.com/cb",
            "--auth-key",
            "lowercaseonly1234",
            env=env,
        )
        assert weak.returncode == 2
        assert "upper case" in weak.stderr


def test_reconcile_once_reports_and_jobs_show_unknown_fails(redis_url: str) -> None:
    emulator_port = free_port()
    with emulating("--delay", "0.1", "--drop-rate", "1", port=emulator_port) as (emulator, _):
        env = env_for(redis_url=redis_url, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        job_id = run("submit", "--video-id", "v", "--template-id", "t", env=env).stdout.strip()
        wait_for(lambda: emulator_jobs(emulator)[0]["status"] == "success", 10, "the job")
        pending = run("jobs", "pending", env=env)
        assert job_id in pending.stdout
        report = json.loads(run("reconcile", "--once", "--grace", "0", env=env).stdout)
        assert (report["overdue"], report["recovered"], report["lookups"]) == (1, 1, 1)
        shown = run("jobs", "show", job_id, env=env)
        assert "reconcile" in shown.stdout
        assert "success" in shown.stdout
    unknown = run("jobs", "show", "nope", env=env_for(redis_url=redis_url))
    assert unknown.returncode == 1
    assert "no job nope" in unknown.stderr


def test_emulator_refuses_bad_options() -> None:
    assert run("emulator", "--access-key", "no-secret").returncode == 2
    bad_rate = run("emulator", "--access-key", "a:b", "--drop-rate", "2")
    assert bad_rate.returncode == 2
    bad_key = run(
        "emulator", "--access-key", "a:b", "--auth-key", "weak", "--port", str(free_port())
    )
    assert bad_key.returncode == 2
    assert "auth_key" in bad_key.stderr


def test_readme_offline_loop_on_the_embedded_store() -> None:
    embedded, emulator_port = str(free_port()), free_port()
    with (
        serving(embedded_port=embedded) as (receiver, _),
        emulating("--callback-url", f"{receiver}/callbacks/vod", "--auth-key", AUTH_KEY,
                  "--delay", "0.2", port=emulator_port),
    ):  # fmt: skip
        env = env_for(embedded_port=embedded, vod_endpoint=f"http://127.0.0.1:{emulator_port}")
        waited = run(
            "submit", "--video-id", "my-video", "--template-id", "my-template", "--wait", env=env
        )
        assert waited.returncode == 0, waited.stderr
        envelope = json.loads(waited.stdout)
        assert envelope["status"] == "success"
        assert envelope["submission"]["template_id"] == "my-template"
