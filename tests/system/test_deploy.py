"""The Kubernetes sidecar example and Helm values: parsed, and checked for what makes them work."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from secrets_agent.config.loader import parse_config
from support import ROOT

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
    assert {v["name"] for v in part["extraVolumes"]} == {"agent-socket", "agent-config"}
    assert part["extraVolumeMounts"] == [
        {"name": "agent-socket", "mountPath": str(Path(socket_path).parent)}
    ]
