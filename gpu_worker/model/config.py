"""ModelConfig: the architecture facts the runner needs, read from a Hugging Face `config.json`.

Rope settings are read both as transformers 4.x writes them (`rope_theta`, `rope_scaling`) and as 5.x does
(`rope_parameters` holding `rope_theta` and `rope_type`).

Sliding window (Mistral, Qwen2 with `use_sliding_window`): attention here is always full. When a window is set and is
smaller than `max_position_embeddings`, `context_length` is capped at the window, so that full attention over the
context is exactly what the model computes; the engine must not admit longer sequences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_ARCHITECTURE_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
}


ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
_ROPE_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
                  "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture is not one this worker implements."""


class ModelConfigError(ValueError):
    """config.json is missing, unreadable or inconsistent."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # rope_type and its parameters; None for plain RoPE
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    name: str
    sliding_window: int | None = None
    o_bias: bool = False  # Llama's attention_bias also puts a bias on o_proj

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_heads ({self.num_heads}) is not a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ModelConfigError(
                f"rms_norm_eps and rope_theta must be positive ({self.rms_norm_eps}, {self.rope_theta})")
        if self.rope_scaling is not None:
            rope_type = self.rope_scaling.get("rope_type")
            if rope_type not in ROPE_TYPES:
                raise UnsupportedModelError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
            missing = [k for k in _ROPE_REQUIRED.get(rope_type, ()) if self.rope_scaling.get(k) is None]
            if missing:
                raise ModelConfigError(f"rope_type {rope_type!r} needs {', '.join(missing)}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ModelConfigError(f"sliding_window must be positive or null, got {self.sliding_window}")
        if any(not 0 <= t < self.vocab_size for t in self.eos_token_ids):
            raise ModelConfigError(f"eos_token_ids {self.eos_token_ids} outside the vocabulary of {self.vocab_size}")

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + output) this model can be run on here."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError:
            raise ModelConfigError(f"{file}: not found (a model directory needs a Hugging Face config.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"{file}: cannot be read as JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{file}: expected a JSON object")
        try:
            return cls.from_dict(raw, name=Path(path).resolve().name)
        except (KeyError, TypeError) as exc:
            raise ModelConfigError(f"{file}: missing or malformed field {exc}") from exc
        except ModelConfigError as exc:
            raise ModelConfigError(f"{file}: {exc}") from exc

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str) -> ModelConfig:
        architectures = raw.get("architectures") or []
        if architectures:
            architecture = architectures[0]
        else:
            architecture = _ARCHITECTURE_BY_MODEL_TYPE.get(raw.get("model_type"), f"model_type={raw.get('model_type')}")
        if architecture not in SUPPORTED_ARCHITECTURES:  # before reading fields another architecture may not have
            raise UnsupportedModelError(
                f"unsupported architecture {architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        head_dim = raw.get("head_dim") or hidden_size // num_heads
        if raw.get("mlp_bias"):
            raise ModelConfigError("mlp_bias=true is not supported")
        rope_theta, rope_scaling = _read_rope(raw)
        eos = raw.get("eos_token_id")
        eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(int(t) for t in eos)
        if architecture == "Qwen2ForCausalLM":
            qkv_bias, o_bias = True, False
            window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
        else:
            qkv_bias = o_bias = bool(raw.get("attention_bias", False))
            window = raw.get("sliding_window") if architecture == "MistralForCausalLM" else None
        return cls(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            name=name,
            sliding_window=None if window is None else int(window),
            o_bias=o_bias,
        )


def _read_rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the 4.x keys or 5.x `rope_parameters`; scaling None means plain RoPE."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # 5.x per-layer-type form
        params = params["full_attention"]
    if isinstance(params, dict):
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = raw.get("rope_theta", 10000.0)
        scaling = dict(raw.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:  # the oldest 4.x spelling
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
        return float(theta), None
    return float(theta), scaling
