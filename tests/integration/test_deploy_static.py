"""The deploy files checked without Docker: Prometheus config and alerts (real promtool), compose, Grafana."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deploy.local.tools import ensure_compose_check, ensure_promtool
from shared.settings import SERVICE_PORTS
from switchboard.services import NAMES

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "switchboard.json"
COMPOSE = REPO / "docker-compose.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

REQUIRED_ALERTS = {
    "SwitchboardQueueOldestWaitingTooLong",
    "SwitchboardConsumerLagGrowing",
    "SwitchboardConsumerUnhealthy",
    "SwitchboardDeadLetterRecords",
    "SwitchboardOutboxBacklogGrowing",
    "SwitchboardServiceDown",
    "SwitchboardQueueSlaAttainmentLow",
}
# What an SRE looks for first on the dashboard (issue 7).
DASHBOARD_MUST_SHOW = {
    "switchboard_chats",
    "switchboard_queue_oldest_waiting_seconds",
    "switchboard_pull_latency_seconds",
    "switchboard_event_apply_latency_seconds",
    "switchboard_consumer_lag_records",
    "switchboard_dlq_records_total",
    "switchboard_outbox_backlog",
    "switchboard_assignments_started_total",
    "switchboard_assignments_ended_total",
    "switchboard_http_requests_total",
    "switchboard_http_request_duration_seconds",
}
SERVICE_ENV = ("SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS", "SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_AUTH_SECRET")
METRIC_NAME = re.compile(r"\bswitchboard_[a-z0-9_]+\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
GRAFANA_RANGE_VARS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")


@dataclass(frozen=True)
class Metric:
    """One row of docs/metrics.md."""

    name: str
    type: str
    labels: tuple[str, ...]
    exposed_by: tuple[str, ...]


def documented_metrics() -> dict[str, Metric]:
    """The metric table of docs/metrics.md, by name: the one list every check compares with."""
    metrics: dict[str, Metric] = {}
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("| `switchboard_"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, kind, labels, exposed_by = cells[0].strip("`"), cells[1], cells[2], cells[3]
        metrics[name] = Metric(
            name=name,
            type=kind,
            labels=tuple(re.findall(r"`([a-z_]+)`", labels)),
            exposed_by=tuple(s.strip() for s in exposed_by.split(",")),
        )
    return metrics


def series_to_metric(series: str, documented: dict[str, Metric]) -> str:
    """The documented metric a series name belongs to (`x_bucket` of a histogram is `x`)."""
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and documented.get(base, None) and documented[base].type == "histogram":
            return base
    return series


def metric_names_in(expr: str, documented: dict[str, Metric]) -> set[str]:
    """Every Switchboard metric a PromQL expression reads."""
    return {series_to_metric(s, documented) for s in METRIC_NAME.findall(expr)}


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    """Every alerting rule in alerts.yml."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def with_defaults(value: str) -> str:
    """A compose value with `${VAR:-default}` replaced by its default, as compose resolves it when VAR is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def compose() -> dict:
    """docker-compose.yml, parsed (anchors and merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict) -> dict[str, str]:
    """A compose service's bind mounts from the repo: source -> path in the container."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[source] = target
    return mounts


def run_promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    """Run promtool and capture what it says."""
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def promtool() -> str:
    """A real promtool (Debian's prometheus package, installed when missing)."""
    return ensure_promtool()


@pytest.fixture(scope="module")
def documented() -> dict[str, Metric]:
    """docs/metrics.md's table."""
    return documented_metrics()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    """The provisioned Grafana dashboard."""
    return json.loads(DASHBOARD.read_text())


# --- the metric catalogue -------------------------------------------------------------------------


def test_metric_catalogue_lists_each_metric_once_with_type_labels_and_exposing_services(documented):
    rows = [ln for ln in METRICS_DOC.read_text().splitlines() if ln.startswith("| `switchboard_")]
    assert len(rows) == len(documented), "a metric is listed twice in docs/metrics.md"
    assert len(documented) >= 20
    for metric in documented.values():
        assert metric.type in {"counter", "gauge", "histogram"}, metric
        assert metric.name.endswith("_total") == (metric.type == "counter"), metric
        assert set(metric.exposed_by) <= set(NAMES), metric
    assert documented["switchboard_consumer_lag_records"].labels == ("group", "topic", "partition")
    assert documented["switchboard_http_requests_total"].labels == ("service", "route", "method", "status")


# --- Prometheus -----------------------------------------------------------------------------------


def test_prometheus_config_is_valid_and_loads_the_alert_rules(promtool):
    result = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_prometheus_scrapes_each_service_by_its_compose_name_and_port():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in NAMES:
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets == [f"{name}:{SERVICE_PORTS[name]}"]
        assert name in compose()["services"], f"scrape target {name} is not a compose service"


def test_alert_rules_are_valid(promtool):
    result = run_promtool(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    result = run_promtool(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_each_required_alert_exists_with_severity_summary_and_a_runbook_section():
    rules = {r["alert"]: r for r in alert_rules()}
    assert REQUIRED_ALERTS <= set(rules)
    runbook_anchors = {
        github_anchor(line.lstrip("#")) for line in OPERATIONS_DOC.read_text().splitlines() if line.startswith("#")
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        doc, _, anchor = annotations["runbook"].partition("#")
        assert doc == "docs/operations.md", name
        assert anchor in runbook_anchors, f"{name}: no section #{anchor} in docs/operations.md"


def test_every_alert_is_unit_tested_both_firing_and_quiet():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fired, quiet = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= quiet, f"never shown staying quiet: {sorted(names - quiet)}"


def test_alert_rules_use_only_documented_metrics(documented):
    used = set()
    for rule in alert_rules():
        names = metric_names_in(rule["expr"], documented)
        assert names or "up{" in rule["expr"], f"{rule['alert']} reads no metric"
        used |= names
    assert used - set(documented) == set(), "alert rules read metrics missing from docs/metrics.md"


# --- Grafana --------------------------------------------------------------------------------------


def test_dashboard_is_a_provisionable_dashboard_on_the_provisioned_datasource(dashboard):
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queried = [p for p in panels if p["type"] != "row"]
    assert len(queried) >= 12
    for panel in queried:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_dashboard_queries_are_valid_promql(promtool, dashboard, tmp_path):
    # promtool parses PromQL in rule files; each query becomes a recording rule with Grafana's
    # range variables replaced by a concrete range.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": GRAFANA_RANGE_VARS.sub("5m", expr)}
        for i, (_, expr) in enumerate(dashboard_exprs(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_only_documented_metrics(dashboard, documented):
    for title, expr in dashboard_exprs(dashboard):
        unknown = metric_names_in(expr, documented) - set(documented)
        assert not unknown, f"panel {title!r} reads undocumented metrics {sorted(unknown)}"


def test_dashboard_shows_queue_latency_lag_dlq_outbox_throughput_and_http(dashboard, documented):
    used = set().union(*(metric_names_in(expr, documented) for _, expr in dashboard_exprs(dashboard)))
    assert DASHBOARD_MUST_SHOW - used == set()
    exprs = " ".join(expr for _, expr in dashboard_exprs(dashboard))
    assert "histogram_quantile(0.5, sum by (le) (rate(switchboard_pull_latency_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(switchboard_pull_latency_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (group, le) (rate(switchboard_event_apply_latency_seconds_bucket" in exprs
    assert "sum by (outcome)" in exprs


def test_dashboard_has_a_queue_variable_that_filters_every_per_queue_panel(dashboard, documented):
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "queue"]
    assert variable["type"] == "query" and variable["includeAll"] and variable["multi"]
    assert variable["datasource"]["uid"] == "prometheus" and "queue)" in variable["definition"]
    per_queue = {
        "switchboard_queue_waiting_chats",
        "switchboard_queue_oldest_waiting_seconds",
        "switchboard_queue_sla_attainment_ratio",
        "switchboard_queue_first_assignments_today",
    }
    filtered = set()
    for title, expr in dashboard_exprs(dashboard):
        for name in metric_names_in(expr, documented) & per_queue:
            if "by (queue)" in expr:
                assert f'{name}{{queue=~"$queue"}}' in expr, f"panel {title!r} does not follow the queue variable"
                filtered.add(name)
    assert filtered == per_queue
    assert "max by (status) (switchboard_operators)" in " ".join(expr for _, expr in dashboard_exprs(dashboard))


def test_grafana_provisioning_loads_the_dashboard_folder_compose_mounts():
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "switchboard.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    mounts = bind_mounts(compose()["services"]["grafana"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- Compose and the image ------------------------------------------------------------------------


def test_compose_has_kafka_in_kraft_mode_postgres_migrations_services_prometheus_and_grafana():
    services = compose()["services"]
    assert {"kafka", "postgres", "migrate", *NAMES, "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    kafka_env = kafka["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert not any("ZOOKEEPER" in key for key in kafka_env)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name in ("kafka", "postgres", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_file_loads_with_docker_composes_own_loader_and_resolves_every_value():
    # compose-go validates against the Compose schema and resolves anchors, merge keys and
    # `${VAR:-default}` exactly as `docker compose up` would, with none of our variables set.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHBOARD_", "GRAFANA_", "COMPOSE_"))}
    result = subprocess.run(
        [ensure_compose_check(), str(COMPOSE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    services = project["services"]
    assert {"kafka", "postgres", "migrate", *NAMES, "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name} mounts missing {mount['source']}"
        for key, value in (service.get("environment") or {}).items():
            assert value is not None and "${" not in value, f"{name}: {key} is unresolved"
    for name in NAMES:
        env_of = services[name]["environment"]
        assert len(env_of["SWITCHBOARD_AUTH_SECRET"]) >= 32
        assert services[name]["healthcheck"]["test"][0] == "CMD"


def test_compose_runs_migrations_once_before_the_services():
    services = compose()["services"]
    migrate = services["migrate"]
    assert migrate["build"] == "." and migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for key in SERVICE_ENV:
        assert migrate["environment"][key], key


@pytest.mark.parametrize("name", NAMES)
def test_compose_runs_each_service_from_the_one_image_with_env_readiness_check_and_ordered_start(name):
    services = compose()["services"]
    service = services[name]
    port = SERVICE_PORTS[name]
    assert service["build"] == "."
    assert service["image"] == services["migrate"]["image"]
    assert service["command"] == ["run", name]
    env = service["environment"]
    assert env["SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert (
        env["SWITCHBOARD_DATABASE_URL"].startswith("postgresql://")
        and "@postgres:5432/" in env["SWITCHBOARD_DATABASE_URL"]
    )
    assert len(with_defaults(env["SWITCHBOARD_AUTH_SECRET"])) >= 32
    assert env["SWITCHBOARD_HTTP_HOST"] == "0.0.0.0"
    check = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    assert f"{port}:{port}" in service["ports"]
    depends = service["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_compose_kafka_advertises_the_address_the_services_use():
    services = compose()["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    bootstrap = services["assigner"]["environment"]["SWITCHBOARD_KAFKA_BOOTSTRAP_SERVERS"]
    assert f"PLAINTEXT://{bootstrap}" in advertised


def test_compose_prometheus_reads_the_checked_config_and_rules():
    prometheus = compose()["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_dockerfile_builds_one_python_311_image_whose_entrypoint_runs_a_service():
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [ln.strip() for ln in dockerfile.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert re.search(r"^RUN pip install \.(\s|$)", dockerfile, re.M)
    assert 'ENTRYPOINT ["switchboard"]' in instructions
    assert any(ln.startswith("USER ") and "root" not in ln for ln in instructions)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".local", ".cache"} <= set(ignored)
