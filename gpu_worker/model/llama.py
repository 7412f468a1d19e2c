"""The Llama family (Llama, Mistral, Qwen2) over a flat varlen batch of tokens with a paged KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpu_worker.model.attention import AttentionMetadata, paged_attention
from gpu_worker.model.config import ModelConfig
from gpu_worker.model.native_ops import NativePointwise
from gpu_worker.model.rope import RotaryEmbedding, rotate

Angles = tuple[torch.Tensor, torch.Tensor]  # RoPE cos, sin of a step's positions, each [T, 1, dim / 2]

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: K and V of [slots, kv_heads, head_dim]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.native: NativePointwise | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None and x.is_contiguous():
            return self.native.rms_norm(x, self.weight, self.eps)
        return self.forward_torch(x)

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 like the reference implementation, then back to the activation dtype before the weight.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_bias)
        self.scale = self.head_dim**-0.5
        self.native: NativePointwise | None = None

    def forward(self, angles: Angles, x: torch.Tensor, meta: AttentionMetadata,
                k_cache: torch.Tensor, v_cache: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden], or [R, hidden] for the given rows only (every row's K and V are cached)."""
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, q_size + 2 * kv_size]
        qk_size = self.q_size + self.kv_size
        # q and k heads rotated together: one set of RoPE ops per layer instead of two
        heads = qkv[:, :qk_size].view(tokens, self.num_heads + self.num_kv_heads, self.head_dim)
        if self.native is not None and qkv.stride(1) == 1 and angles[0].is_contiguous() and angles[1].is_contiguous():
            qk = self.native.rope(heads, *angles)
        else:
            qk = rotate(heads, *angles)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]  # [T, heads, dim], [T, kv_heads, dim]
        v = qkv[:, qk_size:].view(tokens, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, k_cache, v_cache, meta, self.scale).reshape(tokens, self.q_size)  # [T, q_size]
        return self.o_proj(out if rows is None else out[rows])


class MLP(nn.Module):
    """SwiGLU with the gate and up projections fused into one matmul."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.native: NativePointwise | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 * intermediate]
        if self.native is not None and gate_up.is_contiguous():
            return self.down_proj(self.native.silu_mul(gate_up))
        gate, up = gate_up.split(self.intermediate_size, dim=-1)  # [T, intermediate] each
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, angles: Angles, hidden: torch.Tensor, meta: AttentionMetadata,
                k_cache: torch.Tensor, v_cache: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.self_attn(angles, self.input_layernorm(hidden), meta, k_cache, v_cache, rows)
        hidden = (hidden if rows is None else hidden[rows]) + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaForCausalLM(nn.Module):
    """Module names follow the checkpoint's (less the `model.` prefix) so the loader's mapping stays short."""

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding):
        super().__init__()
        self.config = config
        self.rope = rope
        # _weight skips the random init (on the meta device, normal_ alone would cost a 2 s import).
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_cache: KVCache, rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [T], positions [T] -> final hidden states [T, hidden], or [R, hidden] of the given rows only.

        Past the last layer's attention, only the rows that sample are needed: a prompt's other tokens skip its
        output projection and MLP (a fifth of a prompt token's layer work on the 4-layer built-in model).
        """
        hidden = self.embed_tokens(input_ids)  # [T, hidden]
        angles = self.rope.angles(positions)
        last = len(self.layers) - 1
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, kv_cache, strict=True)):
            hidden = layer(angles, hidden, meta, k_cache, v_cache, rows if i == last else None)
        return self.norm(hidden)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [S, hidden] of the rows that sample -> logits [S, vocab] float32."""
        if self.lm_head is None:
            return F.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    def use_native_pointwise(self, ops: NativePointwise) -> None:
        """Norms, SwiGLU and RoPE in C (see native_ops.py), for a bfloat16 model on CPU."""
        weight = self.embed_tokens.weight
        if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
            raise ValueError(f"the C pointwise ops serve bfloat16 on CPU, not {weight.dtype} on {weight.device}")
        for module in self.modules():
            if isinstance(module, (RMSNorm, Attention, MLP)):
                module.native = ops

    def untie_lm_head(self) -> None:
        """Give tied embeddings a Linear of their own for the logits (which pack_linears can then prepack)."""
        if self.lm_head is None:
            self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False,
                                     device=self.embed_tokens.weight.device, dtype=self.embed_tokens.weight.dtype)
            self.lm_head.weight = self.embed_tokens.weight
