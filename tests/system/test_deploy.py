"""The Kubernetes sidecar example and Helm values: parsed, and checked for what makes them work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from secrets_agent.config.loader import load_config, parse_config
from support import ROOT
from support.helpers import demo_files, running_agent, write_config

K8S = ROOT / "deploy" / "kubernetes"
BACKEND = "secrets_agent_client.AgentSecretsBackend"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def check_sidecar(agent: dict[str, Any], socket_dir: str) -> None:
    assert agent["restartPolicy"] == "Always"  # a native sidecar: starts first, stops last
    assert agent["startupProbe"]["exec"]["command"] == ["secrets-agent", "probe", "ready"]
    assert agent["livenessProbe"]["exec"]["command"] == ["secrets-agent", "probe", "alive"]
    assert agent["args"] == ["run", "--config", "/etc/airflow-secrets-agent/config.toml"]
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts == {"agent-socket": socket_dir, "agent-config": "/etc/airflow-secrets-agent"}
    security = agent["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True


def test_worker_pod_example() -> None:
    config_map, pod = documents("worker-pod.yaml")
    assert (config_map["kind"], pod["kind"]) == ("ConfigMap", "Pod")
    config = parse_config(tomllib.loads(config_map["data"]["config.toml"]), base_dir=Path("/"))
    socket_dir = str(Path(config.listener.socket_path).parent)

    (agent,) = pod["spec"]["initContainers"]
    check_sidecar(agent, socket_dir)
    (worker,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["AIRFLOW__WORKERS__SECRETS_BACKEND"] == BACKEND
    assert env["AIRFLOW__SECRETS__BACKEND"] == BACKEND
    for key in ("AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS", "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        assert json.loads(env[key])["socket_path"] == config.listener.socket_path
    assert {m["name"]: m["mountPath"] for m in worker["volumeMounts"]} == {
        "agent-socket": socket_dir
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["agent-socket"]["emptyDir"]["medium"] == "Memory"
    assert volumes["agent-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    # Same uid in both containers: the agent's default allow-list is its own uid.
    assert pod["spec"]["securityContext"]["runAsUser"] == 50000


@pytest.mark.parametrize("component", ["workers", "scheduler"])
def test_helm_values_add_the_sidecar(component: str) -> None:
    (values,) = documents("airflow-helm-values.yaml")
    assert values["config"]["workers"]["secrets_backend"] == BACKEND
    assert values["config"]["secrets"]["backend"] == BACKEND
    socket_path = json.loads(values["config"]["workers"]["secrets_backend_kwargs"])["socket_path"]
    part = values[component]
    (agent,) = part["extraInitContainers"]
    check_sidecar(agent, str(Path(socket_path).parent))
    assert agent["readinessProbe"]["exec"]["command"] == ["secrets-agent", "probe", "ready"]
    assert {v["name"] for v in part["extraVolumes"]} == {"agent-socket", "agent-config"}
    assert part["extraVolumeMounts"] == [
        {"name": "agent-socket", "mountPath": str(Path(socket_path).parent)}
    ]


# -- checked against Kubernetes' own OpenAPI schemas (bundled by kubernetes-validate, offline) --

# 1.29 is the first release with native sidecars (restartPolicy: Always on an init container).
KUBERNETES_VERSIONS = ["1.29.0", "1.37.0"]
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "airflow-helm-values.yaml")
# Files whose first document is a chart's values (no kind), then Kubernetes objects.
CHART_VALUES_FIRST = {"shared-cache-valkey.yaml"}


def validate(document: dict[str, Any], version: str) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    # strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` does.
    kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_match_the_kubernetes_schemas(name: str, version: str) -> None:
    found = documents(name)
    if name in CHART_VALUES_FIRST:
        assert "kind" not in found[0]
        found = found[1:]
    assert found
    for document in found:
        validate(document, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_helm_values_containers_match_the_kubernetes_schemas(version: str) -> None:
    """The chart's values.schema.json is not on any registry here; the pod parts still are."""
    (values,) = documents("airflow-helm-values.yaml")
    for component in ("workers", "scheduler"):
        part = values[component]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": component},
            "spec": {
                "initContainers": part["extraInitContainers"],
                "containers": [
                    {"name": "base", "image": "x", "volumeMounts": part["extraVolumeMounts"]}
                ],
                "volumes": part["extraVolumes"],
            },
        }
        validate(pod, version)


def test_schema_validation_catches_a_misspelt_field() -> None:
    import kubernetes_validate

    _, daemonset = documents("daemonset.yaml")
    daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset, KUBERNETES_VERSIONS[-1])
    del daemonset["spec"]["template"]["spec"]["containers"][0]["readinessProbes"]
    daemonset["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["type"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset, KUBERNETES_VERSIONS[-1])


# -- the node agent --------------------------------------------------------------------------


def test_daemonset_node_agent() -> None:
    config_map, daemonset = documents("daemonset.yaml")
    assert daemonset["kind"] == "DaemonSet"  # one agent per node
    config = parse_config(tomllib.loads(config_map["data"]["config.toml"]), base_dir=Path("/"))
    socket_dir = str(Path(config.listener.socket_path).parent)
    spec = daemonset["spec"]["template"]["spec"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["agent-socket"]["hostPath"]["path"] == socket_dir
    assert volumes["agent-config"]["configMap"]["name"] == config_map["metadata"]["name"]

    (agent,) = spec["containers"]
    assert agent["args"] == ["run", "--config", "/etc/airflow-secrets-agent/config.toml"]
    assert agent["startupProbe"]["exec"]["command"] == ["secrets-agent", "probe", "ready"]
    assert agent["readinessProbe"]["exec"]["command"] == ["secrets-agent", "probe", "ready"]
    assert agent["livenessProbe"]["exec"]["command"] == ["secrets-agent", "probe", "alive"]
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {
        "metrics": config.metrics.port
    }
    security = agent["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["agent-socket"]["mountPath"] == socket_dir
    assert mounts["agent-config"]["readOnly"] is True

    # Peer credentials still decide: tasks' uid allowed, by uid only, and not the agent's own.
    agent_uid = spec["securityContext"]["runAsUser"]
    assert config.listener.allowed_uids == (50000,) and agent_uid not in (50000, 0)
    assert config.listener.allowed_gids == ()
    assert config.listener.admin_uids == ()
    # Its exec probes (`secrets-agent probe`) run as the agent's uid: a status uid, no reader.
    assert config.listener.status_uids == (agent_uid,)
    # The init container only hands the hostPath directory to the agent's uid.
    (prepare,) = spec["initContainers"]
    assert f"os.chown(d, {agent_uid}, 0)" in prepare["command"][-1]
    assert set(prepare["securityContext"]["capabilities"]["add"]) == {"CHOWN", "FOWNER"}
    assert prepare["securityContext"]["allowPrivilegeEscalation"] is False


def test_task_pod_template_mounts_the_node_socket_read_only() -> None:
    config_map, _ = documents("daemonset.yaml")
    config = parse_config(tomllib.loads(config_map["data"]["config.toml"]), base_dir=Path("/"))
    socket_dir = str(Path(config.listener.socket_path).parent)
    (pod,) = documents("task-pod-template.yaml")
    assert pod["spec"]["securityContext"]["runAsUser"] in (config.listener.allowed_uids or ())
    (volume,) = pod["spec"]["volumes"]
    assert volume["hostPath"] == {"path": socket_dir, "type": "Directory"}
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        assert container["volumeMounts"] == [
            {"name": "agent-socket", "mountPath": socket_dir, "readOnly": True}
        ]
    (task,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in task["env"]}
    assert env["AIRFLOW__WORKERS__SECRETS_BACKEND"] == BACKEND
    assert json.loads(env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])["socket_path"] == (
        config.listener.socket_path
    )


_ASK = """
import os, socket, sys
os.setgroups([]); os.setgid(0); os.setuid(int(sys.argv[2]))
with socket.socket(socket.AF_UNIX) as s:
    s.connect(sys.argv[1])
    s.sendall(b"GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % sys.argv[3].encode())
    print(s.recv(4096).split(b"\\r\\n", 1)[0].decode())
"""


def _ask_through_read_only_mount(
    host_dir: Path, pod_dir: Path, uid: int, path: str = "/v1/variables/greeting"
) -> str:
    """A task pod's view: the hostPath directory bind-mounted read-only, then a request as uid."""
    script = (
        f"mount --bind {host_dir} {pod_dir} && mount -o remount,ro,bind {pod_dir} && "
        f'exec {sys.executable} -c "$0" {pod_dir}/agent.sock {uid} {path}'
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, _ASK],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace and other uids")
def test_node_agent_socket_through_a_read_only_host_path(short_tmp: Path) -> None:
    """The DaemonSet's listener settings, as they run: tasks' uid in, a same-gid stranger out."""
    config_map, _ = documents("daemonset.yaml")
    listener = tomllib.loads(config_map["data"]["config.toml"])["listener"]
    host_dir, pod_dir = short_tmp / "host", short_tmp / "pod"
    host_dir.mkdir(mode=0o755)
    pod_dir.mkdir()
    # What the init container does for the agent's uid (10001 in the pod; here the agent runs
    # as this process's uid): the agent owns the directory, so no one else can swap the socket.
    os.chown(host_dir, os.getuid(), 0)
    host_dir.chmod(0o750)
    demo_files(short_tmp)
    allowed = ", ".join(str(u) for u in listener["allowed_uids"])
    body = f"""
        [listener]
        socket_path = "{host_dir}/agent.sock"
        socket_mode = "{listener["socket_mode"]}"
        allowed_uids = [{allowed}]
        allowed_gids = []
        admin_uids = []
        status_uids = {listener["status_uids"]}
        [[backends]]
        name = "local"
        type = "file"
        variables_file = "variables.json"
    """
    config = load_config(write_config(short_tmp, textwrap.dedent(body)))
    with running_agent(config):
        # The socket belongs to gid 0 with mode 0660, so the kernel lets both in; the agent's
        # peer check is what tells them apart.
        assert _ask_through_read_only_mount(host_dir, pod_dir, 50000) == "HTTP/1.1 200 OK"
        assert _ask_through_read_only_mount(host_dir, pod_dir, 50001) == "HTTP/1.1 403 Forbidden"
        # The agent's own exec probes (its uid, 10001): health and readiness, and no secret.
        for path, answer in (("/healthz", "200 OK"), ("/readyz", "200 OK")):
            assert _ask_through_read_only_mount(host_dir, pod_dir, 10001, path) == (
                f"HTTP/1.1 {answer}"
            )
        assert _ask_through_read_only_mount(host_dir, pod_dir, 10001) == "HTTP/1.1 403 Forbidden"
