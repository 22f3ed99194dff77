"""LLaDA-compatible model code, registered with transformers' Auto classes on demand."""

from __future__ import annotations

from pathlib import Path

from services.worker.model.configuration_llada import LLaDAConfig
from services.worker.model.modeling_llada import KVCache, LLaDAModelLM, Segment
from shared.profiles import SHIPPED_MODEL_DIR

__all__ = ["LLaDAConfig", "LLaDAModelLM", "KVCache", "Segment", "register_llada", "load_model", "load_tokenizer", "default_model_dir"]

_registered = False


def register_llada() -> None:
    """Register the architecture with AutoConfig/AutoModel (idempotent, explicit rather than on import)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    _registered = True


def default_model_dir() -> Path:
    """The shipped model, committed under models/ at the repository root."""
    return SHIPPED_MODEL_DIR


def load_model(path: str | Path, device: str = "cpu", dtype: str = "auto") -> LLaDAModelLM:
    """Load from a local directory only (never the hub). bf16 on CUDA, fp32 on CPU unless told otherwise."""
    import torch
    from transformers import AutoModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path}: expected a directory with config.json and weights")
    register_llada()
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModel.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    return model.to(device).eval()


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
