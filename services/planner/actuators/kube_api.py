"""The few Kubernetes API calls the actuator makes, through the official ``kubernetes`` client.

Calls block (the client is synchronous); the actuator runs them in a thread. Patches are JSON merge
patches, named explicitly rather than left to the client's choice of content type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

MERGE_PATCH = "application/merge-patch+json"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Pods with a lower cost are removed first when their ReplicaSet scales down (Kubernetes >= 1.22).
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclass(frozen=True)
class DeploymentState:
    replicas: int  # spec.replicas: what was asked for
    current: int  # status.replicas: non-terminated pods
    ready: int  # status.readyReplicas
    settled: bool  # the controller has seen the latest spec (observedGeneration >= generation)
    selector: str  # the pods' label selector


@dataclass(frozen=True)
class PodInfo:
    name: str
    created: datetime | None
    terminating: bool
    deletion_cost: int = 0


def own_namespace(configured: str) -> str:
    if configured:
        return configured
    try:
        return NAMESPACE_FILE.read_text().strip()
    except OSError:
        raise ValueError("planner.k8s_namespace is not set and this process is not in a pod "
                         f"({NAMESPACE_FILE} is unreadable)") from None


def _cost(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class KubeApi:
    """Scale subresource, Deployment status and pod annotations in one namespace."""

    def __init__(self, namespace: str, api_url: str = "") -> None:
        from kubernetes import client, config

        if api_url:  # e.g. `kubectl proxy`, which adds the credentials itself
            api_client = client.ApiClient(client.Configuration(host=api_url))
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException as exc:
                raise ValueError(f"planner.actuator=kubernetes needs a pod's service account or planner.k8s_api_url: {exc}") from None
            api_client = client.ApiClient()
        self.namespace = namespace
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self._client = api_client

    def get_scale(self, name: str) -> int:
        return int(self.apps.read_namespaced_deployment_scale(name, self.namespace).spec.replicas or 0)

    def set_scale(self, name: str, replicas: int) -> int:
        body = {"spec": {"replicas": int(replicas)}}
        scale = self.apps.patch_namespaced_deployment_scale(name, self.namespace, body, _content_type=MERGE_PATCH)
        return int(scale.spec.replicas or 0)

    def deployment(self, name: str) -> DeploymentState:
        d = self.apps.read_namespaced_deployment(name, self.namespace)
        st, labels = d.status, (d.spec.selector.match_labels or {})
        return DeploymentState(
            replicas=int(d.spec.replicas or 0), current=int(st.replicas or 0) if st else 0,
            ready=int(st.ready_replicas or 0) if st else 0,
            settled=bool(st) and int(st.observed_generation or 0) >= int(d.metadata.generation or 0),
            selector=",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        )

    def pods(self, selector: str) -> list[PodInfo]:
        items = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [PodInfo(p.metadata.name, p.metadata.creation_timestamp, p.metadata.deletion_timestamp is not None,
                        _cost((p.metadata.annotations or {}).get(DELETION_COST))) for p in items]

    def set_deletion_cost(self, pod: str, cost: int) -> None:
        body = {"metadata": {"annotations": {DELETION_COST: str(int(cost))}}}
        self.core.patch_namespaced_pod(pod, self.namespace, body, _content_type=MERGE_PATCH)

    def close(self) -> None:
        self._client.close()
