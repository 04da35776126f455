"""deploy/k8s: schema-valid manifests whose commands, settings, probes and volumes match the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from sqlalchemy.engine import make_url

from services.common.settings import Settings
from tests.deploy import REPO_ROOT, parse_mona_command, settings_aliases

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
NAMESPACE = "mona"
WORKLOAD_KINDS = {"Deployment", "Job"}
APPLY_ORDER = ["Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job", "Deployment"]
"""``kubectl apply -f deploy/k8s/`` applies the files in name order: each kind must come after what it needs."""

Doc = dict[str, Any]


def load_documents() -> list[tuple[Path, Doc]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        documents += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


DOCUMENTS = load_documents()


def named(kind: str, name: str) -> Doc:
    matches = [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, got {len(matches)}"
    return matches[0]


def workloads() -> Iterator[Doc]:
    return (doc for _, doc in DOCUMENTS if doc["kind"] in WORKLOAD_KINDS)


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def only_container(doc: Doc) -> Doc:
    containers: list[Doc] = pod_spec(doc)["containers"]
    assert len(containers) == 1, f"{doc['metadata']['name']}: expected one container, got {len(containers)}"
    return containers[0]


def container_argv(container: Doc) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def test_manifests_exist() -> None:
    kinds = sorted({doc["kind"] for _, doc in DOCUMENTS})
    expected = ["ConfigMap", "Deployment", "Job", "Namespace", "PersistentVolumeClaim", "Secret", "Service"]
    assert kinds == expected


@pytest.mark.parametrize(
    ("path", "doc"), DOCUMENTS, ids=[f"{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in DOCUMENTS]
)
def test_schema_valid_and_namespaced(path: Path, doc: Doc) -> None:
    version = latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {exc}")
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{path.name}: expected namespace {NAMESPACE}"


def test_files_apply_in_dependency_order() -> None:
    ranks = [APPLY_ORDER.index(doc["kind"]) for _, doc in DOCUMENTS if doc["kind"] in APPLY_ORDER]
    assert ranks == sorted(ranks), [f"{p.name}:{d['kind']}" for p, d in DOCUMENTS]


def test_container_commands_parse_with_the_real_cli() -> None:
    commands = {doc["metadata"]["name"]: parse_mona_command(container_argv(only_container(doc))) for doc in workloads()}
    assert (commands["mona-migrate"].command, commands["mona-migrate"].db_command) == ("db", "upgrade")
    api = commands["mona-api"]
    assert (api.command, api.host, api.port) == ("api", "0.0.0.0", 8000)
    assert (commands["mona-worker-gpu"].command, commands["mona-worker-gpu"].queues) == ("worker", "gpu")
    assert commands["mona-worker-gpu"].concurrency == 1, "one worker process per GPU"
    assert (commands["mona-worker-cpu"].command, commands["mona-worker-cpu"].queues) == ("worker", "cpu")


def test_images_are_the_published_placeholders() -> None:
    images = {doc["metadata"]["name"]: only_container(doc)["image"] for doc in workloads()}
    assert images.pop("mona-worker-gpu") == "ghcr.io/example/mona-gpu:0.1.0"
    assert set(images.values()) == {"ghcr.io/example/mona:0.1.0"}


def config_values() -> dict[str, str]:
    config = named("ConfigMap", "mona-config")["data"]
    secret = named("Secret", "mona-secrets")["stringData"]
    assert not set(config) & set(secret), "a setting is defined twice"
    return {**config, **secret}


def test_config_and_secret_names_are_settings_aliases() -> None:
    unknown = set(config_values()) - settings_aliases()
    assert not unknown, f"expected Settings aliases, got {sorted(unknown)}"
    secret = named("Secret", "mona-secrets")["stringData"]
    assert {"DATABASE_URL", "BROKER_URL", "MONA_API_KEY"} <= set(secret)


def test_config_and_secret_build_settings_for_postgres_and_redis() -> None:
    settings = Settings.model_validate(config_values())
    assert make_url(settings.sqlalchemy_url).drivername == "postgresql+psycopg"
    assert settings.broker_url.startswith(("redis://", "rediss://")) and not settings.embedded_broker
    assert settings.visibility_timeout_s >= 24 * 3600, "the broker must not redeliver a long training job"


def test_workloads_read_the_config_and_secret() -> None:
    aliases = settings_aliases()
    for doc in workloads():
        container = only_container(doc)
        sources = {(kind, ref["name"]) for source in container["envFrom"] for kind, ref in source.items()}
        assert sources == {("configMapRef", "mona-config"), ("secretRef", "mona-secrets")}, doc["metadata"]["name"]
        assert {env["name"] for env in container.get("env", [])} <= aliases


def container_port(container: Doc, port: int | str) -> int:
    """A port number, or a named port resolved through the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_api_probes_and_service() -> None:
    api = named("Deployment", "mona-api")
    assert api["spec"]["replicas"] == 2
    container = only_container(api)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == 8000, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = named("Service", "mona-api")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80 and container_port(container, port["targetPort"]) == 8000
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


def test_gpu_worker_takes_one_gpu_and_time_to_checkpoint() -> None:
    worker = named("Deployment", "mona-worker-gpu")
    limits = only_container(worker)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1
    assert pod_spec(worker)["terminationGracePeriodSeconds"] >= 120
    assert named("Deployment", "mona-worker-cpu")["spec"]["replicas"] == 1
    assert "nvidia.com/gpu" not in only_container(named("Deployment", "mona-worker-cpu"))["resources"].get("limits", {})


def test_artifact_volume_is_shared_at_the_data_dir() -> None:
    pvc = named("PersistentVolumeClaim", "mona-artifacts")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    data_dir = config_values()["MONA_DATA_DIR"]
    for name in ("mona-api", "mona-worker-gpu", "mona-worker-cpu"):
        deployment = named("Deployment", name)
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in pod_spec(deployment)["volumes"]
            if "persistentVolumeClaim" in volume
        }
        mounts = {m["mountPath"]: m["name"] for m in only_container(deployment)["volumeMounts"]}
        assert claims.get(mounts.get(data_dir, "")) == "mona-artifacts", f"{name}: expected the PVC at {data_dir}"
        assert pod_spec(deployment)["securityContext"]["fsGroup"] == 10001, f"{name}: the images' uid/gid"
