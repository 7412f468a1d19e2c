"""Load a Hugging Face safetensors checkpoint (single file, indexed shards, or loose shards) into LlamaForCausalLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from gpu_worker.model.config import ModelConfig
from gpu_worker.model.llama import LlamaForCausalLM
from gpu_worker.model.rope import RotaryEmbedding

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
_FUSED = re.compile(r"^(layers\.\d+\.)(self_attn\.(q|k|v)_proj|mlp\.(gate|up)_proj)\.(weight|bias)$")


class CheckpointError(ValueError):
    """The checkpoint's files or tensors do not match the model its config.json describes."""


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: unreadable index: {exc}") from exc
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shards that do not exist: {', '.join(missing)}")
        return files
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors weights found")
    return files


def load_model(model_dir: str | Path, config: ModelConfig, device: torch.device, dtype: torch.dtype,
               max_positions: int) -> LlamaForCausalLM:
    """Build the model without initialising it, then fill every parameter from the checkpoint."""
    rope = RotaryEmbedding(config, max_positions, device, dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(config, rope)
    model = model.to(dtype).to_empty(device=device)
    _fill(model, config, checkpoint_files(Path(model_dir)))
    return model.eval().requires_grad_(False)


def _fill(model: LlamaForCausalLM, config: ModelConfig, files: list[Path]) -> None:
    params = dict(model.named_parameters())
    pending = {name: set(_parts(name)) for name in params}  # parts of each parameter not loaded yet
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    rows = {"q": (0, q_size), "k": (q_size, kv_size), "v": (q_size + kv_size, kv_size),
            "gate": (0, config.intermediate_size), "up": (config.intermediate_size, config.intermediate_size)}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for hf_name in reader.keys():
                if _IGNORED.match(hf_name) or (hf_name == "lm_head.weight" and config.tie_word_embeddings):
                    continue
                name, part = _target(hf_name)
                if name not in params:
                    raise CheckpointError(f"{file.name}: unexpected tensor {hf_name!r}")
                target = params[name].data
                if part is not None:
                    start, length = rows[part]
                    target = target.narrow(0, start, length)
                tensor = reader.get_tensor(hf_name)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise CheckpointError(f"{file.name}: {hf_name!r} has shape {tuple(tensor.shape)}, "
                                          f"expected {tuple(target.shape)} from config.json")
                target.copy_(tensor)
                pending[name].discard(part or "")
    missing = sorted(f"{name} ({', '.join(sorted(p for p in parts if p)) or 'whole'})"
                     for name, parts in pending.items() if parts)
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors for: {', '.join(missing)}")


def _target(hf_name: str) -> tuple[str, str | None]:
    """Checkpoint name -> (our parameter name, which fused part or None)."""
    name = hf_name.removeprefix("model.")
    fused = _FUSED.match(name)
    if not fused:
        return name, None
    prefix, _, qkv, gate_up, kind = fused.groups()
    if qkv:
        return f"{prefix}self_attn.qkv_proj.{kind}", qkv
    return f"{prefix}mlp.gate_up_proj.{kind}", gate_up


def _parts(name: str) -> tuple[str, ...]:
    if ".qkv_proj." in name:
        return ("q", "k", "v")
    if ".gate_up_proj." in name:
        return ("gate", "up")
    return ("",)
