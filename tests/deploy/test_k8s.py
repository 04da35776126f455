"""deploy/k8s: schema-valid manifests whose commands, settings, probes and volumes match the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from services.common.migrate import upgrade_head
from services.common.models import Dataset, Model, Report, TrainingJob
from services.common.settings import Settings
from services.common.tasks import EVALUATE_TASK, QUEUE_GPU, ROUTES, TRAIN_TASK
from tests.deploy import REPO_ROOT, parse_mona_command, settings_aliases

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
NAMESPACE = "mona"
WORKLOAD_KINDS = {"Deployment", "Job"}
APPLY_ORDER = ["Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job", "Deployment", "PodDisruptionBudget"]
KUSTOMIZATION = "kustomization.yaml"
"""``kubectl apply -f deploy/k8s/`` applies the files in name order: each kind must come after what it needs."""

Doc = dict[str, Any]


def load_documents() -> list[tuple[Path, Doc]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
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
    expected = [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
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


def _yaml(path: Path) -> Doc:
    doc: Doc = yaml.safe_load(path.read_text())
    return doc


def test_kustomization_applies_every_manifest_and_sets_the_images_once() -> None:
    kustomization = _yaml(K8S_DIR / KUSTOMIZATION)
    manifests = sorted(path.name for path in K8S_DIR.glob("*.yaml") if path.name != KUSTOMIZATION)
    assert kustomization["resources"] == manifests, "`kubectl apply -k` must apply what `apply -f` would"
    images = {image["name"]: image for image in kustomization["images"]}
    for doc in workloads():
        name, _, tag = only_container(doc)["image"].rpartition(":")
        assert name in images, f"{doc['metadata']['name']}: image {name} is not set in {KUSTOMIZATION}"
        assert images[name]["newTag"] == tag and images[name]["newName"] == name


def test_workers_are_probed_with_a_celery_ping() -> None:
    for name in ("mona-worker-gpu", "mona-worker-cpu"):
        container = only_container(named("Deployment", name))
        for probe in ("startupProbe", "livenessProbe"):
            args = parse_mona_command(container[probe]["exec"]["command"])
            assert (args.command, args.ping) == ("worker", True), f"{name} {probe}"
            assert container[probe]["timeoutSeconds"] > args.ping_timeout, f"{name} {probe}: the ping must fit"


def test_disruption_budgets_select_their_deployments() -> None:
    for name, key in (("mona-api", "minAvailable"), ("mona-worker-gpu", "maxUnavailable")):
        budget = named("PodDisruptionBudget", name)
        labels = named("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert budget["spec"][key] == 1, name


KEDA_DIR = K8S_DIR / "keda"


def keda_documents() -> dict[str, Doc]:
    docs = [doc for path in sorted(KEDA_DIR.glob("*.yaml")) if path.name != KUSTOMIZATION for doc in [_yaml(path)]]
    return {doc["kind"]: doc for doc in docs}


def test_keda_scales_the_gpu_workers_to_zero_on_the_queue_and_the_database() -> None:
    kustomization = _yaml(KEDA_DIR / KUSTOMIZATION)
    assert kustomization["resources"][0] == ".." and all(
        (KEDA_DIR / r).is_file() for r in kustomization["resources"][1:]
    )
    docs = keda_documents()
    scaled = docs["ScaledObject"]
    assert scaled["metadata"]["namespace"] == NAMESPACE
    assert named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])["metadata"]["name"] == "mona-worker-gpu"
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 1
    triggers = {trigger["type"]: trigger for trigger in scaled["spec"]["triggers"]}
    assert triggers["redis"]["metadata"]["listName"] == QUEUE_GPU == ROUTES[TRAIN_TASK] == ROUTES[EVALUATE_TASK]
    secret_keys = set(docs["Secret"]["stringData"])
    auth = docs["TriggerAuthentication"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"connection", "address", "password"}
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= secret_keys
    assert all(ref["name"] == docs["Secret"]["metadata"]["name"] for ref in auth["spec"]["secretTargetRef"])
    for trigger in triggers.values():
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_keda_query_counts_unfinished_gpu_work_on_the_real_schema(tmp_path: Path) -> None:
    """The ScaledObject's SQL, run on a database migrated to head: queued and running jobs and evaluations count."""
    query = keda_documents()["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    url = f"sqlite:///{tmp_path / 'keda.db'}"
    upgrade_head(url)
    engine = create_engine(url)

    def demand() -> int:
        with engine.connect() as connection:
            return int(connection.execute(text(query)).scalar_one())

    assert demand() == 0
    with Session(engine) as session, session.begin():
        session.add(Dataset(id="d" * 32, name="x", preset="mri", classes=["background", "LV"]))
        session.flush()
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            session.add(TrainingJob(kind="supervised", dataset_id="d" * 32, config={}, status=status))
        session.flush()
        session.add(TrainingJob(id="j" * 32, kind="supervised", dataset_id="d" * 32, config={}, status="succeeded"))
        session.flush()
        session.add(
            Model(
                id="m" * 32,
                job_id="j" * 32,
                onnx_key="k",
                manifest_key="k",
                onnx_sha256="0" * 64,
                classes=["background", "LV"],
                preset="mri",
                size=32,
                metrics={},
            )
        )
        session.flush()
        session.add(Report(source="evaluation", model_id="m" * 32, status="running"))
        session.add(Report(source="segmentation", model_id="m" * 32, status="queued"))
    assert demand() == 3, "2 unfinished jobs + 1 unfinished evaluation (a segmentation runs in the API, not on a GPU)"
    engine.dispose()
