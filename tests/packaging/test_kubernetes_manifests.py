"""deploy/kubernetes: every manifest valid for the Kubernetes API (kubernetes-validate, strict,
against the oldest and the newest version we state), and the properties the broker relies on."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
import yaml

from packaging_support import IMAGE_UID, ROOT, load_yaml_documents, project_version

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="install the test extra (kubernetes-validate)")

BASE = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests are written for, and the newest whose schemas the
# validator ships.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


def _resources() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in load_yaml_documents(BASE / name)]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [r for r in _resources() if r["kind"] == kind]
    return found


def _site_generated() -> list[dict[str, Any]]:
    """What the site overlay's generators produce from the files `sts init` writes (as
    kustomize builds them, without the name hash)."""
    overlay = yaml.safe_load((BASE / "site-kustomization.yaml").read_text())
    files = {"sts.yaml": (ROOT / "sts" / "examples" / "example.yaml").read_text(),
             "kek": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "\n",
             "database-url": "postgresql://sts:change-me@db.example.internal:5432/sts"}
    out: list[dict[str, Any]] = []
    for generator in overlay["configMapGenerator"]:
        data = {}
        for spec in generator["files"]:
            key, _, name = spec.rpartition("=")
            data[key or name] = files[name]
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"], "namespace": overlay["namespace"]}, "data": data})
    for generator in overlay["secretGenerator"]:
        data = {}
        for spec in generator["files"]:
            key, _, name = spec.rpartition("=")
            data[key or name] = base64.b64encode(files[name].encode()).decode()
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": generator["name"], "namespace": overlay["namespace"]}, "data": data})
    return out


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml", "site-kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api(version: str) -> None:
    for resource in _resources() + _site_generated():
        kubernetes_validate.validate(resource, version, strict=True)


def test_validator_can_fail() -> None:
    broken = dict(_one("Deployment"))
    broken["spec"] = {**broken["spec"], "replicas": "two"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def _pod_specs() -> dict[str, dict[str, Any]]:
    return {"Deployment": _one("Deployment")["spec"]["template"]["spec"], "Job": _one("Job")["spec"]["template"]["spec"]}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


def test_deployment_runs_two_or_more_replicas() -> None:
    assert _one("Deployment")["spec"]["replicas"] >= 2


def test_pods_run_non_root_with_a_read_only_root_filesystem() -> None:
    for kind, pod in _pod_specs().items():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == IMAGE_UID, kind
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", kind
        assert pod["automountServiceAccountToken"] is False, kind
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (kind, container["name"])
            assert sc["allowPrivilegeEscalation"] is False, (kind, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (kind, container["name"])
            assert "runAsUser" not in sc or sc["runAsUser"] != 0


def test_only_tmp_is_writable_and_it_is_an_empty_dir() -> None:
    for kind, pod in _pod_specs().items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in _containers(pod):
            writable = [m for m in container.get("volumeMounts", []) if not m.get("readOnly")]
            assert [m["mountPath"] for m in writable] == ["/tmp"], (kind, container["name"])
            assert "emptyDir" in volumes[writable[0]["name"]]


def test_probes_ask_readyz_and_healthz_on_the_named_port() -> None:
    (broker,) = _pod_specs()["Deployment"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in broker["ports"]}
    env = {e["name"]: e.get("value") for e in broker["env"]}
    assert ports["http"] == int(env["STS_PORT"])
    assert broker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert broker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # A database outage makes a replica unready; the liveness probe must not restart it for that.
    assert broker["livenessProbe"]["httpGet"]["path"] != "/readyz"


def test_kek_comes_from_a_secret_file_readable_by_the_image_group() -> None:
    pod = _pod_specs()["Deployment"]
    (broker,) = pod["containers"]
    env = {e["name"]: e for e in broker["env"]}
    assert "STS_KEK" not in env
    kek_file = env["STS_KEK_FILE"]["value"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in broker["volumeMounts"] if kek_file.startswith(m["mountPath"] + "/")]
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "sts-kek" and mount["readOnly"] is True
    assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == IMAGE_UID


def test_trust_configuration_comes_from_a_config_map() -> None:
    pod = _pod_specs()["Deployment"]
    (broker,) = pod["containers"]
    config = next(e["value"] for e in broker["env"] if e["name"] == "STS_CONFIG")
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in broker["volumeMounts"] if config.startswith(m["mountPath"] + "/")]
    assert volumes[mount["name"]]["configMap"]["name"] == "sts-config"
    assert config.rsplit("/", 1)[1] == "sts.yaml"


def test_site_overlay_generates_every_config_map_and_secret_the_base_uses() -> None:
    generated = {(r["kind"], r["metadata"]["name"]): r for r in _site_generated()}
    used: set[tuple[str, str]] = set()
    for pod in _pod_specs().values():
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                used.add(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                used.add(("Secret", volume["secret"]["secretName"]))
        for container in _containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add(("Secret", ref["name"]))
                    assert ref["key"] in generated[("Secret", ref["name"])]["data"]
    assert used == set(generated)
    assert "sts.yaml" in generated[("ConfigMap", "sts-config")]["data"]
    assert "kek" in generated[("Secret", "sts-kek")]["data"]
    overlay = yaml.safe_load((BASE / "site-kustomization.yaml").read_text())
    assert overlay["resources"] == ["../kubernetes"]


def test_pod_disruption_budget_keeps_one_broker() -> None:
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] >= 1
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_migration_job_runs_db_upgrade() -> None:
    job = _one("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert "command" not in container  # the image's entrypoint: sts
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    # The brokers wait for it rather than crash-loop on an old schema.
    (init,) = _pod_specs()["Deployment"]["initContainers"]
    assert "sts db current" in " ".join(init["command"])


def test_network_policy_covers_the_broker_pods() -> None:
    policy = _one("NetworkPolicy")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == ["http"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 5432, 443} <= egress_ports


def test_service_balances_over_ready_brokers() -> None:
    service = _one("Service")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_images_name_this_version() -> None:
    images = {c["image"] for pod in _pod_specs().values() for c in _containers(pod)}
    assert images == {f"workload-sts:{project_version()}"}
    overlay = yaml.safe_load((BASE / "site-kustomization.yaml").read_text())
    assert [i["name"] for i in overlay["images"]] == ["workload-sts"]
    assert overlay["images"][0]["newTag"] == project_version()
