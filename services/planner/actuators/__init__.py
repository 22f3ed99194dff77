"""Plan actuators: who carries a changed plan out (``planner.actuator``).

- ``local`` (``LocalActuator``): the node supervisors follow the published plan and run the worker
  processes (``dilaserve up --supervised``);
- ``kubernetes`` (``KubernetesActuator``): scale one worker Deployment per configuration through the
  Scale subresource, drains first, and wait until the ready replicas match.
"""

from __future__ import annotations

from services.planner.actuators.base import ActuationResult, Actuator, plan_totals
from services.planner.actuators.local import LocalActuator
from shared.config import PlannerConfig

__all__ = ["ActuationResult", "Actuator", "LocalActuator", "make_actuator", "plan_totals"]


def make_actuator(cfg: PlannerConfig, bus=None) -> Actuator:
    """The actuator ``cfg.actuator`` names (validated when the config was loaded)."""
    if cfg.actuator == "local":
        return LocalActuator()
    if cfg.actuator == "kubernetes":
        from services.planner.actuators.kube_api import KubeApi, own_namespace
        from services.planner.actuators.kubernetes import KubernetesActuator

        return KubernetesActuator(cfg, KubeApi(own_namespace(cfg.k8s_namespace), cfg.k8s_api_url), bus)
    raise ValueError(f"planner.actuator must be 'local' or 'kubernetes', got {cfg.actuator!r}")
