"""RMSNorm, SiLU x up and RoPE in C (gpu_worker/model/native_ops.py) against the torch formulas they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_worker.model.llama import RMSNorm
from gpu_worker.model.native_ops import NativePointwise, disagreement, native_pointwise_or_none
from gpu_worker.model.rope import rotate


@pytest.fixture(scope="module")
def ops() -> NativePointwise:
    built = native_pointwise_or_none()
    assert built is not None, "the C compiler is part of this project's machines; see the log for why it failed"
    return built


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3).to(torch.bfloat16)


def bits_equal_share(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    return (got.view(torch.int16) == expected.view(torch.int16)).float().mean().item()


@pytest.mark.parametrize("rows", [1, 5, 130])
@pytest.mark.parametrize("size", [256, 200, 37])
def test_rms_norm_matches_the_torch_formula(ops, rows, size):
    norm = RMSNorm(size, 1e-5).to(torch.bfloat16)
    norm.weight.data = randn(size, seed=1)
    x = randn(rows, size)
    with torch.inference_mode():
        assert bits_equal_share(ops.rms_norm(x, norm.weight, norm.eps), norm.forward_torch(x)) > 0.999


@pytest.mark.parametrize("rows", [1, 5, 130])
@pytest.mark.parametrize("size", [688, 40, 7])  # whole vectors and a tail, a tail alone
def test_silu_mul_matches_the_torch_formula(ops, rows, size):
    gate_up = randn(rows, 2 * size)
    gate, up = gate_up.split(size, dim=-1)
    with torch.inference_mode():
        got, expected = ops.silu_mul(gate_up), F.silu(gate) * up
    assert bits_equal_share(got, expected) > 0.999  # e^x here and in torch may round a last bit apart
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-7, atol=0)


def test_silu_mul_keeps_nan(ops):
    gate_up = randn(2, 64)
    gate_up[0, 3] = float("nan")
    assert ops.silu_mul(gate_up)[0, 3].isnan()


@pytest.mark.parametrize("rows", [1, 9])
def test_rope_reads_q_and_k_from_the_fused_projection(ops, rows):
    qkv = randn(rows, 8 * 64)  # 4 q heads, 2 k heads, 2 v heads of 64
    heads = qkv[:, :6 * 64].view(rows, 6, 64)  # rows strided by the whole projection's width
    cos, sin = randn(rows, 1, 32, seed=2), randn(rows, 1, 32, seed=3)
    got = ops.rope(heads, cos, sin)
    assert got.is_contiguous()
    assert bits_equal_share(got, rotate(heads, cos, sin)) == 1.0


def test_the_start_up_check_passes_and_would_catch_a_wrong_result(ops, monkeypatch):
    assert disagreement(ops) is None
    monkeypatch.setattr(ops, "silu_mul", lambda gate_up: gate_up[:, : gate_up.shape[1] // 2].clone())
    assert disagreement(ops) == "silu_mul"


def test_only_a_bfloat16_cpu_model_takes_them(ops):
    from gpu_worker.config import BUILTIN_MODEL_DIR
    from gpu_worker.model_runner import TorchRunner

    runner = TorchRunner(BUILTIN_MODEL_DIR, dtype="float32", num_kv_blocks=16)
    with pytest.raises(ValueError, match="bfloat16 on CPU"):
        runner.model.use_native_pointwise(ops)
