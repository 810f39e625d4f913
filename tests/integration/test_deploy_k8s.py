"""The image and the Kubernetes manifests, checked without a cluster or a container engine.

Every built-in object is validated against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: an unknown or misspelt field fails), for the oldest
version the manifests need (1.29: per-index Job retries) and the newest it knows.
Prometheus Operator's custom resources have no schema there, so their shape is checked
here against the fields the operator defines. Composition is checked the way kustomize
would meet it: every listed resource exists and loads, every file is listed, and names
referenced across files (Secret, ConfigMap, labels, ports) agree. The rest ties the
manifests to the code: probe paths are asked of the real HTTP server, env names of the
real settings, the entrypoint of pyproject, and the Dockerfile's context is built into a
wheel after applying .dockerignore the way Docker does.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer.config import OPTIONS, HttpSettings, SourceSettings, env_name
from consumer.service.http import HttpServer
from tests.conftest import DevnetFactory
from tests.procs import clean_env
from tests.reference import expected_rows, plays_rows

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BACKFILL = K8S / "backfill"
START = K8S / "start"
# The base and the one-off Jobs beside it, each its own kustomization.
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OPERATIONS = ROOT / "docs" / "operations.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CUSTOM_GROUP = "monitoring.coreos.com/"
SECRET = "core-plays-consumer-db"
CONFIGMAP = "core-plays-consumer"
LIVE_LABELS = {
    "app.kubernetes.io/name": "core-plays-consumer",
    "app.kubernetes.io/component": "live",
}
# A clean stop waits for whatever is in flight: one batch commit, bounded here generously,
# on top of the longest single call deadline (see _drain_bound_s).
COMMIT_BUDGET_S = 10.0


# --------------------------------------------------------------------------------- loading


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kustomization(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def _resources(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object a kustomization composes, following nested kustomizations."""
    for entry in _kustomization(folder)["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            yield from _resources(path)
        else:
            for doc in _load(path):
                yield path, doc


def _all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [item for folder in KUSTOMIZATIONS for item in _resources(folder)]


def _objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _all_objects() if doc["kind"] == kind]


def _one(kind: str, folder: Path = K8S) -> dict[str, Any]:
    found = [doc for _, doc in _resources(folder) if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {folder}, found {len(found)}"
    return found[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for doc in _objects("Deployment") + _objects("Job")
    ]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _all_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{owner}/{c['name']}", c) for owner, pod in _pod_specs() for c in _containers(pod)]


def _builtin_manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in _all_objects() if not d["apiVersion"].startswith(CUSTOM_GROUP)]


def _configmap_env() -> dict[str, str]:
    for doc in _objects("ConfigMap"):
        if doc["metadata"]["name"] == CONFIGMAP:
            data: dict[str, str] = doc["data"]
            return data
    raise AssertionError(f"no ConfigMap {CONFIGMAP}")


def _setting(name: str) -> str | None:
    """A setting's value in the pods: the shared ConfigMap's, or None for the default."""
    return _configmap_env().get(env_name(name))


# ------------------------------------------------------------------------ schemas and shape


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "manifest",
    _builtin_manifests(),
    ids=lambda m: f"{m[0].relative_to(K8S)}:{m[1]['kind']}",
)
def test_manifest_validates_against_the_kubernetes_schema(
    manifest: tuple[Path, dict[str, Any]], version: str
) -> None:
    kubernetes_validate.validate(manifest[1], version, strict=True)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = _one("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbes"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


_LABEL_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["matchLabels"],
    "additionalProperties": False,
}
_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
# The fields of monitoring.coreos.com/v1 that these manifests use, as the operator's CRDs
# declare them; anything else (a typo) is refused.
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": {
        "type": "object",
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                            "required": ["port"],
                            "additionalProperties": False,
                        },
                    },
                },
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
            },
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
    },
    "PrometheusRule": {
        "type": "object",
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": _DURATION,
                                            "labels": {"type": "object"},
                                            "annotations": {"type": "object"},
                                        },
                                        "required": ["expr"],
                                        "oneOf": [
                                            {"required": ["alert"]},
                                            {"required": ["record"]},
                                        ],
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["groups"],
                "additionalProperties": False,
            },
        },
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize(
    "manifest",
    [(p, d) for p, d in _all_objects() if d["apiVersion"].startswith(CUSTOM_GROUP)],
    ids=lambda m: m[1]["kind"],
)
def test_custom_resource_has_the_prometheus_operator_shape(
    manifest: tuple[Path, dict[str, Any]],
) -> None:
    doc = manifest[1]
    assert doc["kind"] in CUSTOM_SCHEMAS, f"no shape known for {doc['kind']}"
    jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[doc["kind"]]).validate(doc)


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_kustomization_resource_exists_and_loads(folder: Path) -> None:
    entries = _kustomization(folder)["resources"]
    assert entries
    for entry in entries:
        path = folder / entry
        assert path.exists(), f"{folder.name}/kustomization.yaml lists missing {entry}"
    objects = list(_resources(folder))
    for path, doc in objects:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert doc["metadata"]["name"], path
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {folder}: {names}"


def test_every_manifest_file_is_listed_in_its_kustomization() -> None:
    listed = {path for path, _ in _all_objects()}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set()


def test_generated_rule_and_dashboard_copies_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_k8s", ROOT / "scripts" / "gen_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [
        str(p.relative_to(ROOT)) for p, text in module.render().items() if p.read_text() != text
    ]
    assert stale == [], "run scripts/gen_k8s.py"


def test_prometheus_rule_carries_exactly_the_alert_rules_file() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert _one("PrometheusRule")["spec"] == rules


def test_dashboard_configmap_carries_the_dashboard_for_the_grafana_sidecar() -> None:
    source = ROOT / "deploy" / "grafana" / "core-plays-consumer.json"
    configmap = next(
        d for d in _objects("ConfigMap") if d["metadata"]["name"].endswith("-dashboard")
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {source.name: source.read_text()}
    assert json.loads(configmap["data"][source.name])["uid"] == "core-plays-consumer"


def test_pod_monitor_scrapes_the_live_pods_on_their_metrics_port() -> None:
    monitor = _one("PodMonitor")
    pod = _one("Deployment")["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"


def test_pod_monitor_leaves_the_backfill_pods_out_of_the_alerts() -> None:
    selector = _one("PodMonitor")["spec"]["selector"]["matchLabels"]
    job_labels = _one("Job", BACKFILL)["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()


def test_service_and_budget_select_exactly_the_deployment_pods() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == LIVE_LABELS
    assert _one("Service")["spec"]["selector"] == LIVE_LABELS
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == LIVE_LABELS
    assert LIVE_LABELS.items() <= pod_labels.items()


def test_service_publishes_the_metrics_of_pods_that_are_not_ready() -> None:
    service = _one("Service")
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]


# ---------------------------------------------------------------------- ties to the code


def _metrics_port() -> int:
    addr = _setting("metrics-addr") or HttpSettings().metrics_addr
    return HttpSettings(metrics_addr=addr).host_port[1]


def _probes() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, kind, container[kind])
        for name, container in _all_containers()
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if kind in container
    ]


def test_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    probes = _probes()
    assert {kind for _, kind, _ in probes} >= {"livenessProbe", "readinessProbe"}
    for name, kind, probe in probes:
        expected = "/readyz" if kind == "readinessProbe" else "/healthz"
        assert probe["httpGet"]["path"] == expected, f"{name} {kind}"


def test_probe_ports_are_the_port_the_consumer_listens_on() -> None:
    for name, container in _all_containers():
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for kind in ("livenessProbe", "readinessProbe"):
            if kind in container:
                port = container[kind]["httpGet"]["port"]
                assert ports.get(port, port) == _metrics_port(), f"{name} {kind}"


async def test_probe_paths_answer_200_from_the_consumer_http_server() -> None:
    async with HttpServer("127.0.0.1", 0, CollectorRegistry(), lambda: (True, "ok")) as server:
        for name, kind, probe in _probes():
            status = await _get_status(server.port, probe["httpGet"]["path"])
            assert status == 200, f"{name} {kind}"
        assert await _get_status(server.port, "/nonexistent") == 404


async def _get_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(head.split()[1])


def _drain_bound_s() -> float:
    """The longest a clean stop can wait: one in-flight call's deadline, then one commit.

    A database connect attempt waits up to --connect-timeout-s and a node call up to
    --rpc-timeout-s; after SIGTERM the runner starts nothing new.
    """
    defaults = SourceSettings()
    connect = float(_setting("connect-timeout-s") or defaults.connect_timeout_s)
    rpc = float(_setting("rpc-timeout-s") or defaults.rpc_timeout_s)
    return max(connect, rpc) + COMMIT_BUDGET_S


@pytest.mark.parametrize("owner", [p[0] for p in _pod_specs()])
def test_termination_grace_period_outlasts_the_drain(owner: str) -> None:
    pod = dict(_pod_specs())[owner]
    assert pod["terminationGracePeriodSeconds"] > _drain_bound_s()


def test_every_configmap_key_is_a_consumer_setting() -> None:
    known = {env_name(opt.flag) for opt in OPTIONS} | {"CORE_PLAYS_DATABASE_PASSWORD"}
    assert set(_configmap_env()) - known == set()


def test_every_consumer_variable_set_in_a_container_is_a_setting() -> None:
    known = {env_name(opt.flag) for opt in OPTIONS} | {"CORE_PLAYS_DATABASE_PASSWORD"}
    for name, container in _all_containers():
        names = {e["name"] for e in container.get("env", []) if e["name"].startswith("CORE_PLAYS")}
        assert names - known == set(), name


def test_every_container_reads_the_database_url_and_password_from_one_secret() -> None:
    for name, container in _all_containers():
        env = {e["name"]: e for e in container.get("env", [])}
        url = env["CORE_PLAYS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        password = env["CORE_PLAYS_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (url["name"], url["key"]) == (SECRET, "database-url"), name
        assert (password["name"], password["key"]) == (SECRET, "database-password"), name
        # Optional: a URL that already carries the password needs no second key.
        assert password.get("optional") is True, name
        refs = {r["configMapRef"]["name"] for r in container.get("envFrom", [])}
        assert refs == {CONFIGMAP}, name


def test_operations_guide_creates_the_secret_the_pods_read() -> None:
    guide = OPERATIONS.read_text()
    command = re.search(rf"create secret generic {SECRET}((?:.*\\\n)*.*)", guide)
    assert command, f"docs/operations.md does not create Secret {SECRET}"
    assert {"database-url", "database-password"} <= set(
        re.findall(r"--from-\w+=([\w-]+)", command.group(1))
    )


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    uid = int(_dockerfile_final_stage()["USER"][0].split(":")[0])
    for owner, pod in _pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, owner
        assert context["runAsUser"] == uid, owner
        assert context["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert pod["automountServiceAccountToken"] is False, owner
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
            assert "add" not in sc["capabilities"], container["name"]
            assert not sc.get("privileged", False), container["name"]


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    for name, container in _all_containers():
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            assert resource in resources["requests"], name
            assert resource in resources["limits"], name
        assert _mebibytes(resources["limits"]["memory"]) >= _mebibytes(
            resources["requests"]["memory"]
        ), name


# Peak RSS measured for `run` (deploy/k8s/deployment.yaml says how), in MiB: the typical
# devnet profile, and the busy one (2,000 plays per block).
MEASURED_TYPICAL_PEAK_MIB = 67
MEASURED_BUSY_PEAK_MIB = 107


def test_memory_of_every_run_container_is_sized_from_the_measured_peaks() -> None:
    runs = [(n, c) for n, c in _all_containers() if "migrate" not in c.get("args", [])]
    assert len(runs) == 3  # live, backfill, start
    for name, container in runs:
        resources = container["resources"]
        assert _mebibytes(resources["requests"]["memory"]) >= 1.5 * MEASURED_TYPICAL_PEAK_MIB, name
        assert _mebibytes(resources["limits"]["memory"]) >= 2 * MEASURED_BUSY_PEAK_MIB, name


def _mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_deployment_runs_a_leader_and_a_hot_standby_of_the_live_stream() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    consumer = deployment["spec"]["template"]["spec"]["containers"][0]
    assert consumer["args"] == ["run"]
    # Both replicas must compete for the same lock: the default stream, no --stream.
    assert "CORE_PLAYS_STREAM" not in {e["name"] for e in consumer.get("env", [])}
    assert _setting("stream") is None


def test_migrations_run_before_the_new_version_starts() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["migrate"]
    assert init["image"] == pod["containers"][0]["image"]


def test_every_image_is_tagged_with_the_package_version() -> None:
    version = PYPROJECT["project"]["version"]
    images = {c["image"] for _, c in _all_containers()}
    assert images == {f"core-plays-consumer:{version}"}


# ------------------------------------------------------------------------------ backfill


def test_backfill_job_is_indexed_with_one_part_per_completion() -> None:
    job = _one("Job", BACKFILL)
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert job["spec"]["completionMode"] == "Indexed"
    assert int(env["BACKFILL_PARTS"]) == job["spec"]["completions"]
    assert int(env["BACKFILL_FROM"]) < int(env["BACKFILL_TO"])
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "backfill"
    )


def test_backfill_job_derives_each_part_from_its_completion_index() -> None:
    container = _one("Job", BACKFILL)["spec"]["template"]["spec"]["containers"][0]
    shell, flag, script = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert "set -eu" in script
    assert '--index "$JOB_COMPLETION_INDEX"' in script
    assert "exec plays-consumer run" in script


# --------------------------------------------------------------------------- first start


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in a container's args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]


def _pod_env(container: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: ConfigMap, plain values, overrides."""
    env = clean_env(_configmap_env())
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env.update(overrides)
    return env


async def _run_container(container: dict[str, Any], env: dict[str, str]) -> None:
    argv = container.get("command") or ["plays-consumer"]
    argv = [str(Path(sys.executable).parent / argv[0]) if argv[0] == "plays-consumer" else argv[0]]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *_expand(container.get("args", []), env),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, out.decode() + err.decode()


async def test_start_job_then_the_deployment_continue_the_live_stream_from_its_height(
    devnet_factory: DevnetFactory, database: str
) -> None:
    devnet = await devnet_factory(height=120)
    start = _one("Job", START)["spec"]["template"]["spec"]["containers"][0]
    live = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    common = {
        "CORE_PLAYS_CORE_URL": devnet.url,
        "CORE_PLAYS_DATABASE_URL": database,
        "CORE_PLAYS_METRICS_ADDR": "127.0.0.1:0",
    }
    await _run_container(start, _pod_env(start, START_HEIGHT="50", **common))
    # The Deployment's own command, bounded here so that it ends by itself.
    await _run_container(live, _pod_env(live, CORE_PLAYS_TO_HEIGHT="120", **common))
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute("SELECT stream, start_height, height FROM core_plays.checkpoint")
        assert await cur.fetchall() == [("live", 50, 120)]
        assert await plays_rows(conn) == expected_rows(devnet.chain, 50, 120)


# ---------------------------------------------------------------------------- the image


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def _dockerfile_final_stage() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for instruction, args in _dockerfile_stages()[-1]:
        out.setdefault(instruction, []).append(args)
    return out


def _copy_sources() -> list[list[str]]:
    """The build-context sources of every COPY that does not copy from another stage."""
    sources = []
    for stage in _dockerfile_stages():
        for instruction, args in stage:
            words = args.split()
            if instruction in ("COPY", "ADD") and not any(w.startswith("--from") for w in words):
                sources.append([w for w in words if not w.startswith("--")][:-1])
    return sources


def _ignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """.dockerignore as Docker reads it (moby/patternmatcher): the last matching rule wins."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((re.compile(_pattern_regex(pattern)), negate))
    return rules


def _pattern_regex(pattern: str) -> str:
    out, i = "^", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if char == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        i += 1
    return out + "$"


def _in_context(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether Docker sends this file: a rule matches the path or any folder above it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return not excluded


def _context_files() -> list[str]:
    """The files `docker build -f deploy/docker/Dockerfile .` sends, relative to the root."""
    rules = _ignore_rules()
    reopened = [r.pattern for r, negate in rules if negate]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix().removeprefix(".")
        # Skip a folder Docker excludes unless a `!` rule could let something in it back.
        dirs[:] = [
            d
            for d in dirs
            if _in_context(f"{base}/{d}".lstrip("/"), rules)
            or any(p.startswith(f"^{re.escape(f'{base}/{d}'.lstrip('/'))}") for p in reopened)
        ]
        files += [rel for name in names if _in_context(rel := f"{base}/{name}".lstrip("/"), rules)]
    return sorted(files)


def _copied(source: str, files: list[str]) -> list[str]:
    """The context files a COPY source names: the file, the folder's files, or glob matches."""
    source = source.rstrip("/")
    regex = re.compile(_pattern_regex(source))
    return [f for f in files if regex.match(f) or f.startswith(source + "/")]


def _is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def test_every_copy_source_is_in_the_build_context() -> None:
    context = _context_files()
    for sources in _copy_sources():
        for source in sources:
            if not _is_glob(source):
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                assert _copied(source, context), f"COPY source {source} is in .dockerignore"
        sent = [f for source in sources for f in _copied(source, context)]
        assert sent, f"COPY {' '.join(sources)} would copy nothing"


def test_build_context_holds_the_whole_package_and_no_tests_or_secrets() -> None:
    context = set(_context_files())
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "consumer").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert package - context == set()
    assert not any(f.startswith(("tests/", ".venv/", ".git/", "deploy/")) for f in context)
    assert not any(f.endswith((".pyc", ".env")) for f in context)


def test_build_context_builds_a_wheel_with_the_migrations_and_the_console_script(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    for relative in _context_files():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, context / relative)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-q", "-w", str(tmp_path / "dist"), str(context)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    migrations = {p.name for p in (ROOT / "consumer" / "migrations").glob("*.sql")}
    assert {f"consumer/sink/migrations/{m}" for m in migrations} <= set(names)
    assert "plays-consumer = consumer.__main__:main" in scripts


def test_entrypoint_is_the_console_script_declared_in_pyproject() -> None:
    (entrypoint,) = _dockerfile_final_stage()["ENTRYPOINT"]
    assert json.loads(entrypoint) == list(PYPROJECT["project"]["scripts"])
    assert "plays-consumer" in PYPROJECT["project"]["scripts"]


def test_image_exposes_the_default_metrics_port() -> None:
    assert _dockerfile_final_stage()["EXPOSE"] == [str(HttpSettings().host_port[1])]
    assert _metrics_port() == HttpSettings().host_port[1]


def test_final_image_runs_as_a_numeric_non_root_user() -> None:
    (user,) = _dockerfile_final_stage()["USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0
    assert gid.isdigit() and int(gid) > 0


def test_final_image_copies_only_the_built_virtualenv_and_installs_no_build_tools() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "the image must be multi-stage"
    final = _dockerfile_final_stage()
    build_from = stages[0][0][1].split()[0]
    assert final["FROM"][0].split()[0] == build_from, "both stages share one slim base"
    assert "slim" in _dockerfile_arg_default(build_from.strip("${}"))
    assert all(c.startswith("--from=") for c in final.get("COPY", []))
    assert "ADD" not in final
    for command in final.get("RUN", []):
        assert not re.search(r"apt-get|apk |pip |gcc|make|build-essential", command), command


def _dockerfile_arg_default(name: str) -> str:
    for stage_zero in re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE):
        return str(stage_zero)
    raise AssertionError(f"no ARG {name}")


def test_final_image_has_the_shell_the_backfill_job_runs() -> None:
    # The Job runs /bin/sh; Debian-based python:*-slim images ship it, distroless would not.
    assert "slim" in _dockerfile_arg_default("PYTHON_IMAGE")
    assert "distroless" not in DOCKERFILE.read_text()
