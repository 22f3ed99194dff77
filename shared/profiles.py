"""Measured profiles on disk (``dilaserve profile`` step latency; accuracy vs τ): where they live, reading them.

The policy code (shared/policy) takes the parsed data; this module does the file I/O for the services
and the simulator. A model's profiles sit beside its weights, one per device kind:
``models/dilaserve-tiny/profile-cpu.json``, ``.../profile-h100.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shared.instance_config import device_kind
from shared.policy.cost_model import CostModel
from shared.policy.quality import QualityModel

log = logging.getLogger("dilaserve.profiles")

# The shipped model, committed under models/ (the one place its path is spelled).
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "dilaserve-tiny"
PROFILE_GLOB = "profile-*.json"
DEFAULT_BLOCK_LENGTH = 32  # a model whose config names none (Dream's does not): Fast-dLLM's block size


def model_dir(configured: str) -> Path:
    """``worker.model_dir``; "" = the shipped model."""
    return Path(configured) if configured else SHIPPED_MODEL_DIR


def model_block_length(configured_dir: str) -> int:
    """The model's config.json ``block_length`` (what it was trained with), else DEFAULT_BLOCK_LENGTH:
    the block length every service uses unless worker.block_length sets one."""
    path = model_dir(configured_dir) / "config.json"
    try:
        value = json.loads(path.read_text()).get("block_length")
    except (OSError, ValueError, AttributeError) as e:  # the worker's own load names what is wrong
        log.warning("cannot read block_length from %s (%s)", path, e)
        value = None
    if not isinstance(value, int) or value <= 0:
        log.info("%s names no block_length: decoding in blocks of %d (set worker.block_length to change)",
                 path, DEFAULT_BLOCK_LENGTH)
        return DEFAULT_BLOCK_LENGTH
    return value


def profile_path(model_dir: Path, kind: str) -> Path:
    return model_dir / f"profile-{kind}.json"


def profile_device_kind(data: dict) -> str:
    """The device kind a profile was measured on (its ``device_kind``, else derived from ``device``)."""
    if data.get("device_kind"):
        return str(data["device_kind"])
    device = str(data.get("device", ""))
    return "cpu" if device.startswith("cpu") else device_kind(device)


def read_profile(path: Path) -> dict | None:
    """The profile at ``path``; None (logged) when it is missing or unreadable, so the prior is used."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring cost profile %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or not data.get("points"):
        log.warning("ignoring cost profile %s: no points", path)
        return None
    return data


TPS_PRIOR_FILE = "tokens-per-step.json"  # beside the model: its tokens per step per τ, where measured


def read_tps_prior(model_dir: Path) -> dict[float, float] | None:
    """The model's own tokens per step per τ (``{"tokens_per_step": {"0.9": 4.47, …}}``), the step
    predictors' starting table; None (the built-in LLaDA prior) when the model has none or it is unreadable.
    A model that commits 4.5 tokens a step at τ 0.9 and 9.6 at τ 0.5, started from LLaDA's 3.02 … 6.58,
    learns τ 0.9 during the warm-up and sees τ 0.8 and 0.7 as no faster (the table is kept monotone), so
    under a deadline it drops straight to the floor."""
    path = model_dir / TPS_PRIOR_FILE
    try:
        table = {float(t): float(v) for t, v in json.loads(path.read_text())["tokens_per_step"].items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s (%s): the step predictors start from the built-in prior", path, exc)
        return None
    return {t: v for t, v in table.items() if 0.0 < t <= 1.0 and v > 0} or None


def load_profiles(configured: str, model_dir: Path) -> dict[str, dict]:
    """Device kind → profile: the one ``scheduler.cost_profile`` names, else every one beside the model."""
    paths = [Path(configured)] if configured else sorted(model_dir.glob(PROFILE_GLOB))
    out: dict[str, dict] = {}
    for path in paths:
        data = read_profile(path)
        if data is not None:
            out[profile_device_kind(data)] = data
    return out


def cost_model_named(name: str, config: str = "tp1") -> CostModel:
    """A built-in cost model by name (``CostModel.named``) or a profile JSON path (keyed ``config``)."""
    if name in CostModel.BUILT_IN:
        return CostModel.named(name, config)
    data = read_profile(Path(name))
    if data is None:
        raise ValueError(f"no cost profile at {name!r} (built in: {', '.join(CostModel.BUILT_IN)})")
    return CostModel.from_profile(data, config)


def read_quality_model(path: str) -> QualityModel:
    """An accuracy-vs-τ JSON (``dilaserve simulate --quality``)."""
    return QualityModel.from_data(json.loads(Path(path).read_text()))
