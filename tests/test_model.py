"""The torch model against transformers: prefill logits, greedy decoding, chunked prefill, config and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpu_worker.batch import ScheduledChunk
from gpu_worker.model import (CheckpointError, ModelConfig, ModelConfigError, UnsupportedModelError,
                              allocate_kv_cache, build_metadata, load_model)
from gpu_worker.model.rope import UnsupportedRopeError, rope_inv_freq
from gpu_worker.model_runner import TorchRunner
from protocol.messages import SamplingParams

transformers = pytest.importorskip("transformers")

BLOCK = 4
SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=256, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "llama": (transformers.LlamaConfig, {}, None),
    "llama-sharded": (transformers.LlamaConfig, {"attention_bias": True}, "30KB"),
    "llama3-rope": (transformers.LlamaConfig, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, None),
    "qwen2-tied": (transformers.Qwen2Config, {"tie_word_embeddings": True}, None),
}
PROMPTS = [[7], [1, 5, 9, 200, 3], list(range(10, 23)), [42] * 6 + list(range(100, 124)), [3, 4],
           list(range(250, 200, -3)), [9, 8, 7, 6, 5, 4, 3, 2, 1], [128] * 3]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    out = {}
    for name, (config_class, extra, shard) in VARIANTS.items():
        torch.manual_seed(0)
        reference = transformers.AutoModelForCausalLM.from_config(config_class(**SIZES, **extra)).eval()
        path = tmp_path_factory.mktemp(name)
        kwargs = {"max_shard_size": shard} if shard else {}
        reference.save_pretrained(path, safe_serialization=True, **kwargs)
        reference.generation_config.eos_token_id = None  # generate exactly max_new_tokens, like the runner here
        reference.generation_config.pad_token_id = 0
        out[name] = (path, reference)
    return out


def flat_prefill(prompts: list[list[int]], starts: list[int] | None = None, offset_blocks: int = 0):
    """input ids, positions and metadata for prefilling `prompts` (from `starts`) into disjoint block ranges."""
    starts = starts or [0] * len(prompts)
    ids, positions, slots, tables, lengths = [], [], [], [], []
    for i, (prompt, start) in enumerate(zip(prompts, starts)):
        table = list(range(offset_blocks + 16 * i, offset_blocks + 16 * (i + 1)))
        new = prompt[start:]
        ids += new
        positions += range(start, len(prompt))
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, len(prompt))]
        tables.append(table)
        lengths.append(len(new))
    meta = build_metadata(slots, [], [], tables, starts, lengths, BLOCK, torch.device("cpu"))
    return torch.tensor(ids), torch.tensor(positions), meta


def empty_cache(config: ModelConfig, blocks: int = 256, dtype: torch.dtype = torch.float32):
    return allocate_kv_cache(config.num_layers, blocks, BLOCK, config.num_kv_heads, config.head_dim, dtype,
                             torch.device("cpu"))


def reference_logits(reference, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return reference(torch.tensor([prompt])).logits[0].float()  # [len, vocab]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_varlen_prefill_logits_match_transformers(checkpoints, variant):
    path, reference = checkpoints[variant]
    config = ModelConfig.from_dir(path)
    model = load_model(path, config, torch.device("cpu"), torch.float32, 256)
    prompts = PROMPTS[:5]
    ids, positions, meta = flat_prefill(prompts)
    with torch.inference_mode():
        logits = model.compute_logits(model(ids, positions, meta, empty_cache(config)))  # [T, vocab]
    row = 0
    for prompt in prompts:
        expected = reference_logits(reference, prompt)
        assert expected.abs().max() > 0.5  # large enough that a wrong model could not pass by being near zero
        torch.testing.assert_close(logits[row:row + len(prompt)], expected, atol=1e-4, rtol=1e-4)
        row += len(prompt)


@pytest.mark.parametrize("attention", ["native", "compiled", "eager"])
@pytest.mark.parametrize("variant", ["llama", "qwen2-tied"])
def test_batched_greedy_decode_matches_generate(checkpoints, variant, attention):
    path, reference = checkpoints[variant]
    runner = TorchRunner(path, dtype="float32", block_size=BLOCK, num_kv_blocks=8 * 16, attention=attention)
    assert (runner.decode_kernel is not None) == (attention != "eager")
    assert len(PROMPTS) >= 8  # enough decodes in a step for either kernel to serve them
    new_tokens = 10
    expected = []
    for prompt in PROMPTS:
        out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False)
        expected.append(out[0, len(prompt):].tolist())
    greedy = SamplingParams(temperature=0.0, max_tokens=new_tokens)
    tables = [list(range(16 * i, 16 * (i + 1))) for i in range(len(PROMPTS))]
    outputs: list[list[int]] = [[] for _ in PROMPTS]
    chunks = [ScheduledChunk(i, p, 0, tables[i], True, greedy) for i, p in enumerate(PROMPTS)]
    for _ in range(new_tokens):
        for i, token in enumerate(runner.run(chunks)):
            outputs[i].append(token.token_id)
        chunks = [ScheduledChunk(i, [out[-1]], len(PROMPTS[i]) + len(out) - 1, tables[i], True, greedy,
                                 output_token_ids=tuple(out)) for i, out in enumerate(outputs)]
    assert outputs == expected


def test_chunked_prefill_mixed_with_decode_gives_the_same_logits(checkpoints):
    path, reference = checkpoints["llama"]
    config = ModelConfig.from_dir(path)
    model = load_model(path, config, torch.device("cpu"), torch.float32, 256)
    cache = empty_cache(config)
    long_prompt, other = PROMPTS[3], PROMPTS[1]
    split = 11  # not a block boundary
    with torch.inference_mode():
        ids, positions, meta = flat_prefill([long_prompt[:split], other])
        first = model.compute_logits(model(ids, positions, meta, cache))
        # Step two: the rest of the long prompt (after its cached prefix) and one decode step of the other sequence.
        next_token = int(first[-1].argmax())
        other_table = list(range(16, 32))
        pos = len(other)
        slots = [other_table[pos // BLOCK] * BLOCK + pos % BLOCK]
        slots += [p // BLOCK * BLOCK + p % BLOCK for p in range(split, len(long_prompt))]  # blocks 0..15
        meta = build_metadata(slots, [other_table], [pos + 1], [list(range(16))], [split],
                              [len(long_prompt) - split], BLOCK, torch.device("cpu"))
        ids = torch.tensor([next_token] + long_prompt[split:])
        positions = torch.tensor([pos] + list(range(split, len(long_prompt))))
        second = model.compute_logits(model(ids, positions, meta, cache))
    expected = reference_logits(reference, long_prompt)
    torch.testing.assert_close(first[:split], expected[:split], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second[1:], expected[split:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second[0], reference_logits(reference, other + [next_token])[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("packed", [False, True, "native"], ids=["plain", "prepacked", "prepacked+native-pointwise"])
@pytest.mark.parametrize("variant", ["llama", "qwen2-tied"])
def test_bfloat16_runs_close_to_float32(checkpoints, variant, packed):
    from gpu_worker.model.native_ops import native_pointwise_or_none
    from gpu_worker.model.packed_linear import PackedLinear, can_pack, pack_linears

    path, reference = checkpoints[variant]
    config = ModelConfig.from_dir(path)
    model = load_model(path, config, torch.device("cpu"), torch.bfloat16, 256)
    if packed:
        if not can_pack(torch.device("cpu"), torch.bfloat16):
            pytest.skip("this CPU's oneDNN has no bfloat16 kernels")
        model.untie_lm_head()
        assert pack_linears(model) == 4 * config.num_layers + 1  # qkv, o, gate_up, down per layer; lm_head
        assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())
        assert isinstance(model.lm_head, PackedLinear)
    if packed == "native":
        ops = native_pointwise_or_none()
        assert ops is not None
        model.use_native_pointwise(ops)
    cache = empty_cache(config, dtype=torch.bfloat16)
    ids, positions, meta = flat_prefill(PROMPTS[2:4])
    with torch.inference_mode():
        logits = model.compute_logits(model(ids, positions, meta, cache))
    expected = torch.cat([reference_logits(reference, p) for p in PROMPTS[2:4]])
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()


def test_runner_sizes_the_kv_cache_from_a_budget(checkpoints):
    path, _ = checkpoints["llama"]
    runner = TorchRunner(path, dtype="float32", block_size=16, kv_cache_mb=1)
    bytes_per_block = 2 * 2 * 16 * 2 * 16 * 4  # K and V, layers, block, kv heads, head dim, float32
    assert runner.num_kv_blocks == 2**20 // bytes_per_block
    assert runner.kv_cache[0][0].shape == (2, runner.num_kv_blocks, 16, 16)  # kv heads, blocks, block, head dim
    runner.warmup()
    with pytest.raises(ValueError, match="outside the context"):
        runner.run([ScheduledChunk(0, [1], 256, [0] * 17, True, SamplingParams(temperature=0.0))])


def write_config(path: Path, **changes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 4096, "eos_token_id": [2, 3]}
    raw.update(changes)
    (path / "config.json").write_text(json.dumps(raw))
    return path


def test_rope_settings_round_trip_in_both_transformers_spellings(tmp_path):
    llama3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 2048}
    v4 = ModelConfig.from_dir(write_config(tmp_path / "v4", rope_theta=500000.0,
                                           rope_scaling={"rope_type": "llama3", **llama3}))
    v5 = ModelConfig.from_dir(write_config(tmp_path / "v5", rope_parameters={"rope_type": "llama3",
                                           "rope_theta": 500000.0, **llama3}))
    plain = ModelConfig.from_dir(write_config(tmp_path / "plain", rope_parameters={"rope_type": "default",
                                              "rope_theta": 1e6}))
    assert v4 == v5.__class__(**{**{f: getattr(v5, f) for f in v5.__dataclass_fields__}, "name": v4.name})
    assert v4.rope_theta == 500000.0 and v4.rope_scaling == {"rope_type": "llama3", **llama3}
    assert v4.eos_token_ids == (2, 3) and v4.head_dim == 16
    assert plain.rope_scaling is None and plain.rope_theta == 1e6


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 512},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
])
def test_rope_frequencies_match_transformers(scaling):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=4096,
                                         rope_parameters={"rope_theta": 10000.0, **scaling})
    expected, expected_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_config, torch.device("cpu"))
    inv_freq, scale = rope_inv_freq(128, 10000.0, scaling, 4096)
    torch.testing.assert_close(inv_freq, expected.float())
    assert scale == pytest.approx(expected_scale)
    with pytest.raises(UnsupportedRopeError, match="longrope"):
        rope_inv_freq(128, 10000.0, {"rope_type": "longrope"}, 4096)


def test_config_errors_name_the_cause(tmp_path):
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        ModelConfig.from_dir(write_config(tmp_path / "gpt2", architectures=["GPT2LMHeadModel"]))
    with pytest.raises(ModelConfigError, match="config.json"):
        ModelConfig.from_dir(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="bad/config.json"):
        ModelConfig.from_dir(tmp_path / "bad")
    with pytest.raises(ModelConfigError, match="multiple of num_kv_heads"):
        ModelConfig.from_dir(write_config(tmp_path / "gqa", num_key_value_heads=3))
    with pytest.raises(UnsupportedModelError, match="longrope"):
        ModelConfig.from_dir(write_config(tmp_path / "rope", rope_scaling={"rope_type": "longrope", "factor": 2.0}))
    with pytest.raises(ModelConfigError, match="low_freq_factor"):
        ModelConfig.from_dir(write_config(tmp_path / "llama3", rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    mistral = ModelConfig.from_dir(write_config(tmp_path / "mistral", architectures=["MistralForCausalLM"],
                                                sliding_window=1024))
    assert mistral.context_length == 1024 and mistral.max_position_embeddings == 4096


def test_loader_rejects_missing_and_misshapen_tensors(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = checkpoints["llama"]
    tensors = load_file(path / "model.safetensors")
    config = ModelConfig.from_dir(path)
    broken = tmp_path / "missing"
    broken.mkdir()
    (broken / "config.json").write_text((path / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if "layers.1.self_attn.k_proj" not in k}, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layers\.1\.self_attn\.qkv_proj\.weight \(k\)"):
        load_model(broken, config, torch.device("cpu"), torch.float32, 64)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(64, 64)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj.weight.*\(64, 64\).*\(128, 64\)"):
        load_model(broken, config, torch.device("cpu"), torch.float32, 64)
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_model(tmp_path / "nothing", config, torch.device("cpu"), torch.float32, 64)


def random_paged_cache(dtype: torch.dtype, batch: int = 16, kv_heads: int = 2, group: int = 3, dim: int = 32):
    """q, a shuffled paged cache, block tables and context lengths of 1..40 keys in blocks of 8."""
    torch.manual_seed(0)
    q = torch.randn(batch, kv_heads, group, dim).to(dtype)  # [B, kv_heads, group, dim]
    k_cache, v_cache = torch.randn(2, kv_heads, batch * 5 + 3, 8, dim).to(dtype)  # [kv_heads, blocks, 8, dim]
    tables = torch.randperm(batch * 5 + 3)[:batch * 5].view(batch, 5)
    lens = torch.randint(1, 41, (batch,))
    return q, k_cache, v_cache, tables, lens


def reference_decode(q, k_cache, v_cache, tables, lens, scale):
    """Each sequence's keys read token by token in float32, then SDPA."""
    out = []
    for b in range(q.shape[0]):
        slots = [int(tables[b, p // 8]) * 8 + p % 8 for p in range(int(lens[b]))]
        keys = k_cache.flatten(1, 2)[:, slots].float()  # [kv_heads, n, dim]
        values = v_cache.flatten(1, 2)[:, slots].float()
        out.append(torch.nn.functional.scaled_dot_product_attention(q[b].float(), keys, values, scale=scale))
    return torch.stack(out)  # [B, kv_heads, group, dim]


def test_cpu_bfloat16_decode_by_matmul_matches_sdpa():
    from gpu_worker.model.attention import _decode_by_matmul, gather_context

    q, k_cache, v_cache, tables, lens = random_paged_cache(torch.bfloat16)
    mask = (torch.arange(40) < lens[:, None])[:, None, None, :]  # [B, 1, 1, L]
    got = _decode_by_matmul(q, gather_context(k_cache, tables), gather_context(v_cache, tables), mask, 0.2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference_decode(q, k_cache, v_cache, tables, lens, 0.2),
                               atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_decode_reads_the_paged_cache_in_place(dtype):
    from gpu_worker.model.decode_kernel import compiled_decode_or_none

    q, k_cache, v_cache, tables, lens = random_paged_cache(dtype)
    kernel = compiled_decode_or_none(k_cache, v_cache, group=3)
    assert kernel is not None
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    with torch.inference_mode():
        for rows, width in ((16, 2), (9, 5), (13, 4)):  # batch sizes and table widths other than the traced ones
            lens_here = lens[:rows].clamp(max=8 * width)
            got = kernel(q[:rows], k_cache, v_cache, tables[:rows, :width].contiguous(), lens_here, 0.2)
            want = reference_decode(q[:rows], k_cache, v_cache, tables[:rows], lens_here, 0.2)
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("dtype", "dim", "batch"), [
    (torch.float32, 32, 16), (torch.bfloat16, 32, 16),
    (torch.bfloat16, 64, 48),  # head sizes the vector path unrolls; enough tasks to be taken several at a time
    (torch.float32, 128, 48),
    (torch.bfloat16, 40, 16),  # not a multiple of 16: the portable loop
])
def test_native_decode_reads_the_paged_cache_in_place(dtype, dim, batch):
    from gpu_worker.model.native_decode import native_decode_or_none

    q, k_cache, v_cache, tables, lens = random_paged_cache(dtype, batch=batch, dim=dim)
    kernel = native_decode_or_none(k_cache, v_cache, group=3)
    assert kernel is not None and kernel.min_rows == 1
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    lens[0], lens[1] = 1, 40  # one key; every block full
    with torch.inference_mode():
        for rows, width in ((batch, 5), (1, 5), (9, 3)):
            lens_here = lens[:rows].clamp(max=8 * width)
            got = kernel(q[:rows], k_cache, v_cache, tables[:rows, :width].contiguous(), lens_here, 0.2)
            want = reference_decode(q[:rows], k_cache, v_cache, tables[:rows], lens_here, 0.2)
            assert got.dtype == dtype
            torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=tolerance)
        # scores 100 apart: the softmax must subtract the maximum, or exp overflows
        loud = q[:2] * 400
        got = kernel(loud, k_cache, v_cache, tables[:2].contiguous(), lens[:2], 0.2)
        torch.testing.assert_close(got.float(), reference_decode(loud, k_cache, v_cache, tables[:2], lens[:2], 0.2),
                                   atol=tolerance, rtol=tolerance)

def test_decode_rows_are_split_where_padding_would_double_their_length():
    from gpu_worker.model.attention import split_by_length

    # blocks of 16: 2000 keys = 125 blocks, 100 keys = 7, 60 = 4, 30 = 2, 17 = 2, 16 = 1
    assert split_by_length([2000, 100, 100, 60, 30, 17, 16], 16) == [(0, 1), (1, 6), (6, 7)]
    assert split_by_length([128, 100, 64], 16) == [(0, 3)]  # 8 and 4 blocks: padding 2x is kept
    assert split_by_length([], 16) == []
    meta = build_metadata([0, 1, 2], [[0] * 125, [1] * 7, [2] * 7], [2000, 100, 97], [], [], [], 16,
                          torch.device("cpu"))
    # without a kernel, each segment's blocks are bucketed: 125 -> 128, 7 stays
    assert [(s.start, s.end, tuple(s.block_tables.shape)) for s in meta.decode_segments] == [(0, 1, (1, 128)),
                                                                                              (1, 3, (2, 7))]


def test_bucket_sizes_are_few_and_never_smaller():
    from gpu_worker.model.buckets import bucket

    sizes = {bucket(n) for n in range(1, 8193)}
    assert all(n <= bucket(n) <= 1.25 * n for n in range(1, 8193))
    assert [bucket(n) for n in range(1, 17)] == list(range(1, 17))
    assert len({bucket(n) for n in range(1, 4097)}) == 48
    assert len(sizes) < 60


def test_warm_up_runs_each_distinct_linear_shape_at_every_bucket():
    from gpu_worker.model.buckets import bucket, buckets_up_to
    from gpu_worker.model.packed_linear import PackedLinear, can_pack, pack_linears, warm_every_bucket

    if not can_pack(torch.device("cpu"), torch.bfloat16):
        pytest.skip("this CPU's oneDNN has no bf16 kernels")
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.Linear(32, 48), torch.nn.Linear(48, 16)).bfloat16()
    pack_linears(model)
    seen: dict[int, list[tuple[int, int]]] = {}
    for i, layer in enumerate(model):
        assert isinstance(layer, PackedLinear)
        layer.register_forward_hook(lambda m, args, out, i=i: seen.setdefault(i, []).append((args[0].shape[0],
                                                                                             out.shape[0])))
    calls = warm_every_bucket(model, 40)
    assert buckets_up_to(40) == sorted({bucket(n) for n in range(1, 41)})
    assert calls == 2 * len(buckets_up_to(40))  # the two 32 -> 48 layers share one shape: run once
    rows = sorted(r for shapes in seen.values() for r, _ in shapes)
    assert rows == sorted(buckets_up_to(40) * 2)
    assert all(r == out for shapes in seen.values() for r, out in shapes)


def test_packed_linear_serves_its_float32_rows_from_a_float32_copy():
    from gpu_worker.model.packed_linear import FLOAT32_MAX_ROWS, PackedLinear, can_pack, float32_faster_rows

    if not can_pack(torch.device("cpu"), torch.bfloat16):
        pytest.skip("this CPU's oneDNN has no bf16 kernels")
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32).bfloat16(), torch.randn(48).bfloat16()
    layer = PackedLinear(weight, bias, frozenset({1, 2}))
    assert layer.float32_weight is not None and layer.float32_weight.dtype == torch.float32
    with torch.inference_mode():
        for rows in (1, 2, 3, 40):
            x = torch.randn(rows, 32).bfloat16()
            got = layer(x)
            assert got.dtype == torch.bfloat16 and got.shape == (rows, 48)
            exact = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
            if rows <= 2:  # float32 math, rounded once at the end
                torch.testing.assert_close(got, exact.bfloat16(), atol=0, rtol=0)
            else:
                torch.testing.assert_close(got.float(), exact, atol=0.1, rtol=0.02)
    assert PackedLinear(weight, bias).float32_weight is None  # no copy kept where no row count uses it
    assert float32_faster_rows(weight, bias) <= set(range(1, FLOAT32_MAX_ROWS + 1))


@pytest.mark.parametrize("float32_step_ms", [0.5, 2.0])
def test_float32_copies_stay_only_if_a_whole_step_is_faster_with_them(float32_step_ms):
    from gpu_worker.model.packed_linear import PackedLinear, can_pack, keep_float32_if_faster

    if not can_pack(torch.device("cpu"), torch.bfloat16):
        pytest.skip("this CPU's oneDNN has no bf16 kernels")
    weight, bias = torch.randn(48, 32).bfloat16(), torch.randn(48).bfloat16()
    model = torch.nn.Sequential(PackedLinear(weight, bias, frozenset({1})), PackedLinear(weight, bias))
    used = []

    def run_step() -> float:
        used.append(bool(model[0].float32_rows))
        return (float32_step_ms if model[0].float32_rows else 1.0) / 1000

    keep, with_s, without_s = keep_float32_if_faster(model, run_step)
    assert set(used) == {True, False}, "both ways were timed"
    assert (with_s, without_s) == (float32_step_ms / 1000, 0.001)
    assert keep == (float32_step_ms < 1.0)
    assert (model[0].float32_rows == frozenset({1})) == keep
    assert (model[0].float32_weight is not None) == keep  # a dropped copy frees its memory
    with torch.inference_mode():
        assert model[0](torch.randn(1, 32).bfloat16()).shape == (1, 48)
