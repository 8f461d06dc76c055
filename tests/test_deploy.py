"""The deploy files, checked offline: the alert rules and the dashboard name only metrics the
receiver exports (and the rules fire when they should), the Kubernetes manifests validate
against Kubernetes' schemas and hold the production settings, compose against the compose
spec, and the Dockerfile agrees with what `serve` serves."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import promql_parser
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from redis.asyncio import Redis

from tests.conftest import (
    Receiver,
    RedisServer,
    ServeApp,
    eventually,
    job_callback,
    vod_headers,
)
from tests.processes import ACCESS_KEY_ID, ACCESS_KEY_SECRET, env_for, run
from webhook.cli import build_parser
from webhook.emulator import EmulatorOptions, create_emulator_app
from webhook.settings import ENV_PREFIX, Settings
from webhook.store import Store
from webhook.submitter import JobSpec, Submitter
from webhook.vod import Vod, VodError

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "vod-webhook.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ALERT_CASES = Path(__file__).parent / "alert_cases.yml"
BIN = Path(sys.executable).parent  # hadolint and check-jsonschema come with the dev extra
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# From Debian's `prometheus` package: `make test` puts it in the venv (see `make promtool`).
PROMTOOL = shutil.which("promtool") or shutil.which("promtool", path=str(BIN))
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool (`make promtool`)")

# ---------------------------------------------------------------------------------------------
# Which metric names an expression reads, and which a scrape offers


# Grafana's variables in range selectors, replaced by a duration so the query parses as PromQL
# (a variable inside a label value, like job="$job", is just a string).
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# label_values(metric, label) of a Grafana variable's query, and label_values(label).
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),)?\s*\w+\s*\)$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query) selects: by name or by an
    equality matcher on __name__. Functions, labels and label values are not names."""
    if (label_values := LABEL_VALUES.match(expr.strip())) is not None:
        selector = label_values["selector"]
        return metric_names(selector) if selector else set()
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(
                matcher.value
                for matcher in node.matchers.matchers
                if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal
            )

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


_TYPE_LINE = re.compile(r"# TYPE (?P<family>\S+) (?P<kind>\S+)")


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition offers: the sample names, and from each
    family's TYPE line the names its kind has even before a sample (a labelled counter that
    has not counted yet, a histogram's _bucket, _sum and _count)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if (typed := _TYPE_LINE.match(line)) is not None:
            family, kind = typed["family"], typed["kind"]
            if kind == "counter":
                names.add(family if family.endswith("_total") else f"{family}_total")
            elif kind in {"histogram", "gaugehistogram"}:
                names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            elif kind == "summary":
                names.update(f"{family}{suffix}" for suffix in ("_sum", "_count"))
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def names_used() -> set[str]:
    """Every metric name the alert rules and the dashboard read."""
    expressions = [rule["expr"] for rule in rules()] + dashboard_queries()
    return set().union(*(metric_names(expr) for expr in expressions))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("vod_webhook_ready == 0", {"vod_webhook_ready"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(vod_webhook_callback_duration_seconds_bucket[5m])))",
            {"vod_webhook_callback_duration_seconds_bucket"},
        ),
        # Label names and values are not metric names, whatever they look like.
        (
            'sum by (error) (rate(vod_webhook_callbacks_total{outcome="rejected", error=~"signature_mismatch|x_total"}[$__rate_interval]))',
            {"vod_webhook_callbacks_total"},
        ),
        (
            "sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) or vector(0)",
            {"a_sum", "a_count"},
        ),
        (
            "time() - max(last_pass_seconds) > 3 * 60 or absent(last_pass_seconds)",
            {"last_pass_seconds"},
        ),
        ('{__name__="by_matcher", job="j"} unless b offset 5m', {"by_matcher", "b"}),
        ("max_over_time(c[10m:1m]) and on () d", {"c", "d"}),
        ('label_values(vod_webhook_ready{job="x"}, job)', {"vod_webhook_ready"}),
        ("label_values(job)", set()),
    ],
)
def test_metric_names_are_the_selected_names_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_query_that_is_no_promql_fails_to_parse() -> None:
    with pytest.raises(ValueError, match=r"."):
        metric_names("sum(rate(vod_webhook_callbacks_total[5m])")


EXPOSITION = """\
# HELP demo_callbacks_total Callbacks.
# TYPE demo_callbacks_total counter
demo_callbacks_total{outcome="accepted"} 1.0
# TYPE demo_callbacks_created gauge
demo_callbacks_created{outcome="accepted"} 1.7e+09
# HELP demo_unused_total Never counted yet.
# TYPE demo_unused_total counter
# TYPE demo_openmetrics_style counter
# TYPE demo_duration_seconds histogram
demo_duration_seconds_bucket{le="+Inf",outcome="accepted"} 1.0
# TYPE demo_untouched_seconds histogram
# TYPE demo_wait_seconds summary
demo_wait_seconds{quantile="0.5"} 1.0
# TYPE demo_ready gauge
demo_ready 1.0
"""


def test_exported_names_come_from_samples_and_from_each_kind_of_family() -> None:
    assert exported_names(EXPOSITION) == {
        "demo_callbacks_total",
        "demo_callbacks_created",
        "demo_unused_total",
        "demo_openmetrics_style_total",
        "demo_duration_seconds_bucket",
        "demo_duration_seconds_sum",
        "demo_duration_seconds_count",
        "demo_untouched_seconds_bucket",
        "demo_untouched_seconds_sum",
        "demo_untouched_seconds_count",
        "demo_wait_seconds",
        "demo_wait_seconds_sum",
        "demo_wait_seconds_count",
        "demo_ready",
    }


# ---------------------------------------------------------------------------------------------
# Against the live receiver: every name used is exported

METRICS_TOKEN = "deploy-test-metrics-token-0123456789"
API_TOKEN = "deploy-test-api-token-0123456789"
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}


class MetricsNotServed(AssertionError):
    """GET /metrics answered other than 200: the receiver exports no metrics (yet)."""


async def scrape(http: httpx.AsyncClient, base: str) -> set[str]:
    answer = await http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    if answer.status_code != 200:
        raise MetricsNotServed(f"GET /metrics: {answer.status_code} {answer.text[:200]}")
    return exported_names(answer.text)


@pytest.mark.xfail(
    importlib.util.find_spec("webhook.metrics") is None,
    reason="GET /metrics comes with issue 10's metrics (webhook/metrics.py), not in this branch",
    raises=MetricsNotServed,
    strict=True,
)
async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    own_redis: RedisServer,
    start_receiver: Receiver,
    serve_app: ServeApp,
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", ACCESS_KEY_SECRET)
    options = EmulatorOptions(access_keys={ACCESS_KEY_ID: ACCESS_KEY_SECRET}, delay=0.05)
    emulator = await serve_app(lambda _: create_emulator_app(options))
    settings: dict[str, Any] = {
        "redis_url": own_redis.url,
        "metrics_token": METRICS_TOKEN,
        "api_token": API_TOKEN,
        "verify_outcomes": True,
        "reconcile": True,
        "reconcile_interval_seconds": 0.2,
        "reconcile_grace_seconds": 0,
        "vod_endpoint": emulator,
    }
    base = await start_receiver(**settings)
    url = f"{base}/callbacks/vod"
    redis = Redis.from_url(own_redis.url, decode_responses=True)
    store = Store.from_settings(make_settings(**settings))
    try:
        # A consumer group and a dead letter, so the per-group gauges have a group to report.
        await redis.xgroup_create("vod:stream", "thumbnails", id="0", mkstream=True)
        await redis.xadd("vod:deadletter", {"envelope": "{}", "group": "thumbnails"})

        # One callback of each outcome the receiver decides with Redis up.
        upload = json.dumps(
            {"EventType": "FileUploadComplete", "VideoId": "v1", "Status": "success"}
        )
        answers = [
            await http.post(url, content=upload, headers=vod_headers()),  # accepted
            await http.post(url, content=upload, headers=vod_headers()),  # duplicate
            await http.post(url, json=job_callback("job-held"), headers=vod_headers()),  # held
            await http.post(url, content=upload, headers=vod_headers(key="WrongAuthKey2026abcd")),
            await http.post(url, content=b"{", headers=vod_headers()),
            await http.post(url, content=b"x" * 70_000, headers=vod_headers()),
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 401, 400, 413]
        assert [a.json().get("status") for a in answers[:3]] == ["accepted", "duplicate", "held"]

        # Submissions (one submitted, one refused by VOD), through the shared limiter.
        submitter = Submitter(Vod.from_settings(make_settings(**settings), store.redis), store)
        await submitter.submit(JobSpec(video_id="v1", template_id="tpl"))
        with pytest.raises(VodError):
            await submitter.submit(JobSpec(video_id="notfound-v2", template_id="tpl"))

        # An /events client that connects and goes away.
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with http.stream("GET", f"{base}/events", headers=auth) as events:
            assert events.status_code == 200

        async def reconciled() -> bool:  # a pass recorded the submitted job's outcome
            return await redis.zcard("vod:pending") == 0

        await eventually(reconciled, 10, "a reconciliation pass")
        exported = await scrape(http, base)

        # Redis gone: the receiver answers 503, and counts Redis errors.
        own_redis.stop()
        unavailable = await http.post(url, content=upload, headers=vod_headers())
        assert unavailable.status_code == 503
        exported |= await scrape(http, base)
    finally:
        await store.close()
        await redis.aclose()

    missing = names_used() - exported - PROMETHEUS_OWN
    assert not missing, (
        f"alerts.yml or the dashboard name metrics /metrics lacks: {sorted(missing)}"
    )


# ---------------------------------------------------------------------------------------------
# Prometheus: the rules are valid, fire when they should, and carry what on-call needs

SEVERITIES = {"critical", "warning", "info"}


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    alerts = rules()
    assert len(alerts) >= 8
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), (rule["alert"], annotation)


def alert(name: str) -> dict[str, Any]:
    return next(rule for rule in rules() if rule["alert"] == name)


def threshold(expr: str) -> float:
    """The number a rule compares with, as in `... > 3600` or `... > 3 * 60`."""
    found = re.search(r">\s*([\d.]+)(?:\s*\*\s*([\d.]+))?", expr)
    assert found is not None, expr
    return float(found[1]) * float(found[2] or 1)


@pytest.mark.parametrize(
    ("name", "setting", "share"),
    [
        ("VodWebhookPendingJobOverdue", "reconcile_deadline_seconds", 1),
        ("VodWebhookReconcileStalled", "reconcile_interval_seconds", 3),
        ("VodWebhookConsumerLagNearStreamCap", "stream_maxlen", 0.5),
        ("VodWebhookHeldOutcomesHigh", "max_held_outcomes", 0.8),
    ],
)
def test_thresholds_that_follow_a_setting_use_its_default_and_name_it(
    name: str, setting: str, share: float
) -> None:
    rule = alert(name)
    assert threshold(rule["expr"]) == Settings.model_fields[setting].default * share
    assert f"{ENV_PREFIX}{setting.upper()}" in rule["annotations"]["description"]


def test_the_alerts_cover_what_on_call_must_hear_of() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "VodWebhookSignatureFailuresRising",
        "VodWebhookServerErrors",
        "VodWebhookServiceUnavailable",
        "VodWebhookDeadLetters",
        "VodWebhookPendingJobOverdue",
        "VodWebhookNotReady",
        "VodWebhookConsumerLagGrowing",
        "VodWebhookReconcileStalled",
        "VodWebhookRedisErrors",
    } <= names


def test_every_expression_is_promql() -> None:
    for expr in [rule["expr"] for rule in rules()] + dashboard_queries():
        metric_names(expr)  # raises on a syntax error


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_every_alert_fires_on_its_cases_and_only_then(tmp_path: Path) -> None:
    # promtool compares rendered annotations too: run the cases on the rules without them
    # (`promtool check rules` checks their templates).
    document = yaml.safe_load(ALERTS.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))
    cases = yaml.safe_load(ALERT_CASES.read_text())
    cases["rule_files"] = ["rules.yml"]
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))
    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", "cases.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fired = {
        test["alertname"]
        for case in cases["tests"]
        for test in case["alert_rule_test"]
        if test["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules()}


@needs_promtool
def test_promtool_accepts_the_scrape_config_with_its_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "vod-webhook"  # alerts.yml's up{job="vod-webhook"}
    assert job["authorization"]["type"] == "Bearer"
    assert "credentials" not in job["authorization"]  # the token comes from a file
    token = tmp_path / "metrics_token"
    token.write_text(METRICS_TOKEN)
    job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    checked = subprocess.run(
        [str(PROMTOOL), "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ---------------------------------------------------------------------------------------------
# Grafana: a well-formed dashboard over every metric of the contract

# The metrics of issue 10 (webhook/metrics.py): the dashboard shows each of them.
METRICS = {
    "vod_webhook_callbacks_total",
    "vod_webhook_callback_duration_seconds_bucket",
    "vod_webhook_http_responses_total",
    "vod_webhook_redis_errors_total",
    "vod_webhook_sse_clients",
    "vod_webhook_sse_disconnects_total",
    "vod_webhook_submissions_total",
    "vod_webhook_limiter_wait_seconds_sum",
    "vod_webhook_reconcile_passes_total",
    "vod_webhook_reconcile_recovered_total",
    "vod_webhook_reconcile_timed_out_total",
    "vod_webhook_reconcile_last_pass_timestamp_seconds",
    "vod_webhook_stream_length",
    "vod_webhook_stream_oldest_age_seconds",
    "vod_webhook_consumer_group_lag",
    "vod_webhook_consumer_group_pending",
    "vod_webhook_consumer_group_consumers",
    "vod_webhook_consumer_group_redriven",
    "vod_webhook_deadletter_entries",
    "vod_webhook_pending_jobs",
    "vod_webhook_oldest_pending_job_age_seconds",
    "vod_webhook_held_outcomes",
    "vod_webhook_ready",
}


def test_the_dashboard_shows_every_metric() -> None:
    shown = set().union(*(metric_names(query) for query in dashboard_queries()))
    assert METRICS - shown == set()


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "vod-webhook"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert 'job="$job"' in target["expr"], (panel["title"], target["expr"])


# ---------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    """The instructions of each named stage, and those before the first FROM under ""."""
    found: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, arguments in dockerfile():
        if keyword == "FROM":
            current = arguments.split(" AS ")[1]
            found[current] = []
        found[current].append((keyword, arguments))
    return found


def arg_default(instructions: list[tuple[str, str]], name: str) -> str:
    return next(
        a.partition("=")[2] for k, a in instructions if k == "ARG" and a.startswith(f"{name}=")
    )


def serve_port(args: list[str]) -> int:
    """The port `vod-webhook ARGS` (a `serve`) listens on."""
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve", args
    port: int = parsed.port
    return port


SERVE_DEFAULT_PORT = serve_port(["serve"])


def image_user() -> int:
    user = next(a for k, a in reversed(stages()["runtime"]) if k == "USER")
    uid, _, gid = user.partition(":")
    # Numeric, so that runAsNonRoot can check it.
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    return int(uid)


def test_the_image_is_built_in_two_stages_from_pinned_bases() -> None:
    found = stages()
    assert list(found)[1:] == ["build", "runtime"]
    base = arg_default(found[""], "PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*", base), base
    for name in ("build", "runtime"):
        assert found[name][0] == ("FROM", f"${{PYTHON_IMAGE}} AS {name}")


def test_the_wheel_is_built_with_a_pinned_hatchling_that_pyproject_allows() -> None:
    build = stages()["build"]
    version = arg_default(build, "HATCHLING_VERSION")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (hatchling,) = [r for r in requires if r.startswith("hatchling")]
    assert version in SpecifierSet(hatchling.removeprefix("hatchling"))
    assert any('"hatchling==${HATCHLING_VERSION}"' in a for k, a in build if k == "RUN")
    assert any("--no-build-isolation" in a for k, a in build if k == "RUN")


def test_the_runtime_holds_the_wheel_only_and_runs_as_a_user() -> None:
    runtime = stages()["runtime"]
    assert not [a for k, a in runtime if k in {"COPY", "ADD"}], "sources stay in the build stage"
    (install,) = [a for k, a in runtime if k == "RUN"]
    assert "from=build,source=/dist" in install
    assert "-c /tmp/constraints.txt" in install
    assert "[server,submit]" in install
    assert image_user() > 0


def test_labels_say_what_the_image_is() -> None:
    runtime = stages()["runtime"]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', " ".join(
        a for k, a in runtime if k == "LABEL")))  # fmt: skip
    assert {"title", "description", "version", "revision", "licenses"} <= {
        name.removeprefix("org.opencontainers.image.") for name in labels
    }
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert arg_default(runtime, "VERSION") == VERSION


def test_cmd_expose_and_healthcheck_agree_on_serves_port() -> None:
    runtime = stages()["runtime"]
    (entrypoint,) = [json.loads(a) for k, a in runtime if k == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for k, a in runtime if k == "CMD"]
    (healthcheck,) = [a for k, a in runtime if k == "HEALTHCHECK"]
    (expose,) = [a for k, a in runtime if k == "EXPOSE"]
    assert entrypoint == ["vod-webhook"]
    assert serve_port(cmd) == SERVE_DEFAULT_PORT
    assert expose == str(SERVE_DEFAULT_PORT)
    assert f"http://127.0.0.1:{SERVE_DEFAULT_PORT}/healthz" in healthcheck


def test_hadolint_finds_nothing() -> None:
    linted = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


# ---------------------------------------------------------------------------------------------
# compose


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_follows_the_compose_spec() -> None:
    checked = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_redis_persists_every_acknowledged_callback() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "always",
        "--maxmemory-policy": "noeviction",
    }
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis


def test_compose_services_wait_for_health_restart_and_pin_their_images() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        image = service["image"]
        assert ":" in image, name
        assert not image.endswith(":latest"), name
        for dependency, how in service.get("depends_on", {}).items():
            if "healthcheck" in services[dependency] or dependency == "receiver":
                assert how["condition"] == "service_healthy", (name, dependency)
    assert services["receiver"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["receiver"]["image"] == f"vod-webhook:{VERSION}"
    assert services["reconciler"]["healthcheck"] == {"disable": True}  # no HTTP to check


def test_compose_profiles_keep_the_local_end_to_end_optional() -> None:
    services = compose()["services"]
    assert "profiles" not in services["redis"]
    assert "profiles" not in services["receiver"]
    for name in ("emulator", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["e2e"]
    assert set(services["reconciler"]["profiles"]) == {"reconcile", "e2e"}


def test_compose_receiver_serves_and_is_scraped_where_it_says() -> None:
    document = compose()
    receiver = document["services"]["receiver"]
    port = serve_port(receiver["command"])
    assert port == SERVE_DEFAULT_PORT
    assert receiver["ports"] == [f"{port}:{port}"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"receiver:{port}"]}]
    prometheus = document["services"]["prometheus"]
    assert prometheus["secrets"] == ["metrics_token"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    assert document["secrets"]["metrics_token"] == {"environment": "VOD_WEBHOOK_METRICS_TOKEN"}
    for service in document["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


# ---------------------------------------------------------------------------------------------
# Kubernetes

K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
# Kinds of CRDs the bundled schemas lack: checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                yield path.name, document


def resource(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


def deployments() -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] == "Deployment"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    kinds = set()
    for name, document in manifests():
        kinds.add(document["kind"])
        if document["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {error}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "Ingress", "ConfigMap"} <= kinds


def test_the_kustomization_lists_every_manifest_but_the_templates() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {path.name for path in KUBERNETES.glob("*.yaml")}
    assert set(kustomization["resources"]) == files - {
        "kustomization.yaml",
        "secret.example.yaml",
        "servicemonitor.yaml",
        "ingest-mns.yaml",  # for VOD writing to MNS only
    }


def test_pods_run_as_the_images_user_read_only_without_privileges() -> None:
    for deployment in deployments():
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": image_user(),
            "runAsGroup": image_user(),
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name  # no VOD_WEBHOOK_SERVICE_HOST & co.
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in empty_dirs, name  # what the read-only root cannot hold
            assert container["image"] == f"vod-webhook:{VERSION}", name
            resources = container["resources"]
            assert set(resources["requests"]) == {"cpu", "memory"}, name
            assert mebibytes(resources["limits"]["memory"]) >= mebibytes(
                resources["requests"]["memory"]
            )


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi"))


def test_the_receivers_memory_leaves_room_over_the_measured_rss() -> None:
    # README "Performance": 55 MiB per worker + 50 MiB for the supervisor.
    (receiver,) = resource("Deployment", "vod-webhook")["spec"]["template"]["spec"]["containers"]
    workers = build_parser().parse_args(receiver["args"]).workers
    measured = 55 * workers + 50
    assert mebibytes(receiver["resources"]["requests"]["memory"]) >= measured * 1.15
    assert mebibytes(receiver["resources"]["limits"]["memory"]) >= 285  # issue 10's figure


def test_the_receiver_is_probed_on_the_port_serve_listens_on() -> None:
    deployment = resource("Deployment", "vod-webhook")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = serve_port(container["args"])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    multiproc = next(
        e["value"] for e in container["env"] if e["name"] == "PROMETHEUS_MULTIPROC_DIR"
    )
    assert multiproc.startswith("/tmp/")
    # The pause, then the drain, within the grace period.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    config = resource("ConfigMap", "vod-webhook")["data"]
    drain = float(config["VOD_WEBHOOK_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_reconciler_runs_apart_and_keeps_reconciling() -> None:
    (container,) = resource("Deployment", "vod-webhook-reconciler")["spec"]["template"]["spec"][
        "containers"
    ]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.command == "reconcile"
    assert not parsed.once  # a pass every interval, until stopped


def test_mns_ingest_runs_apart_and_refuses_its_placeholders() -> None:
    (container,) = resource("Deployment", "vod-webhook-ingest-mns")["spec"]["template"]["spec"][
        "containers"
    ]
    assert build_parser().parse_args(container["args"]).command == "ingest-mns"
    values = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    placeholders = {
        name.removeprefix("VOD_WEBHOOK_").lower(): value
        for name, value in values.items()
        if name.startswith("VOD_WEBHOOK_MNS_")
    }
    refused = run("ingest-mns", env=env_for(**placeholders))
    assert refused.returncode == 2
    for name in ("VOD_WEBHOOK_MNS_ENDPOINT", "VOD_WEBHOOK_MNS_QUEUE"):
        assert f"{name}: " in refused.stderr, refused.stderr
    assert pod_labels("vod-webhook-ingest-mns") != pod_labels("vod-webhook")


def pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = resource("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_service_pdb_ingress_and_servicemonitor_reach_the_receivers() -> None:
    labels = pod_labels("vod-webhook")
    deployment = resource("Deployment", "vod-webhook")
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert pod_labels("vod-webhook-reconciler") != labels
    service = resource("Service", "vod-webhook")
    assert service["spec"]["selector"] == labels
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    pdb = resource("PodDisruptionBudget", "vod-webhook")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    ingress = resource("Ingress", "vod-webhook")["spec"]
    (rule,) = ingress["rules"]
    assert [host for tls in ingress["tls"] for host in tls["hosts"]] == [rule["host"]]
    (path,) = rule["http"]["paths"]
    assert path["path"] == Settings.model_fields["callback_path"].default
    assert path["backend"]["service"] == {"name": "vod-webhook", "port": {"name": port["name"]}}
    monitor = resource("ServiceMonitor", "vod-webhook")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    credentials = endpoint["authorization"]["credentials"]
    assert credentials == {"name": "vod-webhook", "key": "VOD_WEBHOOK_METRICS_TOKEN"}


def secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d["stringData"]) for _, d in manifests() if d["kind"] == "Secret"
    }


def test_every_secret_and_setting_the_pods_read_exists() -> None:
    secrets = secret_keys()
    known = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    if "metrics_token" not in Settings.model_fields:  # issue 10's metrics, not in this branch
        known.add("VOD_WEBHOOK_METRICS_TOKEN")
    config = resource("ConfigMap", "vod-webhook")["data"]
    for deployment in deployments():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "vod-webhook"}}]
        names = set(config)
        for variable in container["env"]:
            names.add(variable["name"])
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference is not None and not reference.get("optional", False):
                assert reference["key"] in secrets[reference["name"]], reference
        settings = {name for name in names if name.startswith(ENV_PREFIX)}
        assert settings <= known, settings - known
    assert secrets["vod-webhook-vod"] == {
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    }


def test_the_configmap_holds_the_defaults_the_alerts_assume() -> None:
    config = resource("ConfigMap", "vod-webhook")["data"]
    for setting in ("reconcile_interval_seconds", "reconcile_deadline_seconds"):
        value = float(config[f"{ENV_PREFIX}{setting.upper()}"])
        assert value == Settings.model_fields[setting].default


@pytest.mark.parametrize("command", [["serve"], ["reconcile", "--once"]])
def test_placeholders_left_unfilled_stop_the_pods_naming_each_variable(
    command: list[str],
) -> None:
    """An unfilled ConfigMap or Secret must not run (as a placeholder URL would, rejecting every
    callback signature_mismatch): the commands refuse it at start with exit code 2."""
    env = env_for()
    env.update(resource("ConfigMap", "vod-webhook")["data"])
    env.update(resource("Secret", "vod-webhook")["stringData"])
    stopped = run(*command, env=env)
    assert stopped.returncode == 2, stopped.stderr
    for name in ("VOD_WEBHOOK_CALLBACK_URL", "VOD_WEBHOOK_AUTH_KEYS", "VOD_WEBHOOK_REDIS_URL"):
        assert name in stopped.stderr
