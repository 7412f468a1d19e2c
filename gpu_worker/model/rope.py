"""Rotary position embeddings (the rotate-half form Hugging Face Llama checkpoints are trained with).

Supported rope_type: default, linear, dynamic, llama3, yarn. `dynamic` uses a fixed NTK-scaled base sized for the
full context (as vLLM does), so it matches Hugging Face only for sequences past the original length.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gpu_worker.model.config import ROPE_TYPES, ModelConfig


class UnsupportedRopeError(ValueError):
    pass


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None,
                  max_positions: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim // 2] (float32) and the attention scale cos/sin are multiplied by."""
    base = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [dim / 2]
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return base, 1.0
    assert scaling is not None
    factor = float(scaling.get("factor") or 1.0)
    if rope_type == "linear":
        return base / factor, 1.0
    if rope_type == "dynamic":
        original = scaling.get("original_max_position_embeddings") or max_positions
        max_len = original * factor
        ntk_theta = theta * ((factor * max_len / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return rope_inv_freq(head_dim, ntk_theta, None, max_positions)[0], 1.0
    if rope_type == "llama3":
        return _llama3(base, scaling, factor), 1.0
    if rope_type == "yarn":
        return _yarn(head_dim, theta, scaling, factor, max_positions)
    raise UnsupportedRopeError(f"unsupported rope_type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")


def _llama3(inv_freq: torch.Tensor, scaling: dict[str, Any], factor: float) -> torch.Tensor:
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn(head_dim: int, theta: float, scaling: dict[str, Any], factor: float,
          max_positions: int) -> tuple[torch.Tensor, float]:
    original = scaling.get("original_max_position_embeddings") or max_positions

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding:
    """cos/sin for every position up to `max_positions`, applied to q and k in place of the usual per-call math."""

    def __init__(self, config: ModelConfig, max_positions: int, device: torch.device | str, dtype: torch.dtype):
        inv_freq, scale = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling,
                                        config.max_position_embeddings)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # [max_positions, dim / 2]
        self.cos = (freqs.cos() * scale).to(device=device, dtype=dtype)  # [max_positions, dim / 2]
        self.sin = (freqs.sin() * scale).to(device=device, dtype=dtype)
        self.max_positions = max_positions

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] -> cos, sin [T, 1, dim / 2]: looked up once per step, shared by every layer."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, dim] (q and k heads together) -> rotated, contiguous."""
    x1, x2 = x.chunk(2, dim=-1)  # [T, heads, dim / 2] each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
