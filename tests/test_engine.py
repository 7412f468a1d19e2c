"""The engine in-process: continuous batching, paged KV under pressure, aborts, seeds, stops and per-request errors."""

import pytest

from gpu_worker.config import BUILTIN_MODEL_DIR
from gpu_worker.engine import Engine
from gpu_worker.model_runner import TorchRunner
from gpu_worker.scheduler import SchedulerConfig
from gpu_worker.sim_runner import SimRunner
from gpu_worker.tokenizer import Tokenizer
from protocol.messages import ChatMessage, GenerateRequest, SamplingParams

PROMPTS = [
    "The quick brown fox",
    "def main():",
    "In the beginning",
    "import os\nimport sys\n",
    "A",
    "Once upon a time, in a land far away, there lived a",
    "class Foo(object):\n    def __init__(self):",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12",
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_dir(BUILTIN_MODEL_DIR)


def sim_engine(tokenizer, **kwargs) -> Engine:
    blocks = kwargs.pop("num_kv_blocks", 4096)
    config = SchedulerConfig(kwargs.pop("max_running", 256), kwargs.pop("max_batched_tokens", 2048),
                             kwargs.pop("max_prefill_tokens_while_decoding", None))
    return Engine(SimRunner(0, tokenizer.vocab_size, blocks, kwargs.pop("block_size", 16)), tokenizer, config, 1024)


def torch_engine(tokenizer, num_kv_blocks=2048, block_size=16, max_running=256, max_batched_tokens=2048) -> Engine:
    runner = TorchRunner(
        BUILTIN_MODEL_DIR, dtype="float32", block_size=block_size, num_kv_blocks=num_kv_blocks, threads=1,
        max_running=max_running, max_batched_tokens=max_batched_tokens,
    )
    return Engine(runner, tokenizer, SchedulerConfig(max_running, max_batched_tokens), 2048)


def req(rid, prompt="Hello world", **sampling) -> GenerateRequest:
    sampling.setdefault("max_tokens", 8)
    return GenerateRequest(rid, SamplingParams(**sampling), prompt=prompt)


def run_to_completion(engine: Engine, max_steps: int = 10_000) -> dict[str, dict[int, list[int]]]:
    """request id -> choice index -> generated token ids, stepping until the engine is idle."""
    out: dict[str, dict[int, list[int]]] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return out
        for d in engine.step():
            out.setdefault(d.request_id, {}).setdefault(d.index, []).extend(d.token_ids)
    raise AssertionError("the engine did not go idle")


def test_concurrent_requests_share_steps(tokenizer):
    engine = sim_engine(tokenizer)
    for i in range(32):
        assert engine.add_request(req(f"r{i}", prompt=PROMPTS[i % 8], max_tokens=16)) is None
    out = run_to_completion(engine)
    assert len(out) == 32 and all(len(o[0]) == 16 for o in out.values())
    assert engine.steps_done <= 20  # sequential serving would take 32 * 16 = 512 steps


def test_requests_arriving_mid_decode_join_the_running_batch(tokenizer):
    engine = sim_engine(tokenizer)
    engine.add_request(req("early", max_tokens=30))
    for _ in range(5):
        engine.step()
    engine.add_request(req("late", max_tokens=5))
    ids = {d.request_id for d in engine.step()}
    assert ids == {"early", "late"}
    assert len(engine.scheduler.running) == 2


def test_long_prompts_are_prefilled_in_chunks_beside_decodes(tokenizer):
    engine = sim_engine(tokenizer, max_batched_tokens=64)
    engine.add_request(req("decoding", max_tokens=50))
    engine.step()
    engine.add_request(req("long", prompt="word " * 300, max_tokens=2))
    steps_with_both = 0
    while engine.requests.get("long") is not None and engine.requests["long"][0].num_output_tokens == 0:
        ids = {d.request_id for d in engine.step()}
        steps_with_both += "decoding" in ids
    assert steps_with_both >= 300 // 64  # the decode kept going while the long prompt was prefilled


def test_a_step_that_decodes_takes_few_prompt_tokens(tokenizer):
    cap = 64
    engine = sim_engine(tokenizer, max_prefill_tokens_while_decoding=cap)
    for i in range(3):
        engine.add_request(req(f"long{i}", prompt="word " * 300, max_tokens=2))
    first = engine.scheduler.schedule()
    assert sum(s.num_new_tokens for s in first) > cap, "nothing decodes yet: the whole budget goes to prompts"

    engine = sim_engine(tokenizer, max_prefill_tokens_while_decoding=cap)
    for i in range(3):
        engine.add_request(req(f"decoding{i}", max_tokens=50))
    engine.step()
    for i in range(3):
        engine.add_request(req(f"long{i}", prompt="word " * 300, max_tokens=2))
    batch = engine.scheduler.schedule()
    assert [s.num_new_tokens for s in batch if s.num_new_tokens == 1] == [1, 1, 1], "the decodes go first"
    assert sum(s.num_new_tokens for s in batch if s.num_new_tokens > 1) == cap
    finished = set()
    for _ in range(100):
        finished |= {d.request_id for d in engine.step() if d.finish_reason is not None}
    assert finished == {"decoding0", "decoding1", "decoding2", "long0", "long1", "long2"}, "capped prompts finish"


def test_the_cap_is_lifted_while_more_requests_wait_than_run(tokenizer):
    cap = 64
    engine = sim_engine(tokenizer, max_prefill_tokens_while_decoding=cap)
    engine.add_request(req("decoding", max_tokens=50))
    engine.step()
    for i in range(3):
        engine.add_request(req(f"short{i}", prompt="word " * 40, max_tokens=2))
    batch = engine.scheduler.schedule()
    assert [s.num_new_tokens for s in batch if s.num_new_tokens == 1] == [1]
    assert len([s for s in batch if s.num_new_tokens > 1]) == 3, "an under-filled batch takes the whole queue"
    assert sum(s.num_new_tokens for s in batch if s.num_new_tokens > 1) > cap


def test_abort_frees_blocks_within_the_step(tokenizer):
    engine = sim_engine(tokenizer)
    engine.add_request(req("keep", max_tokens=100))
    engine.add_request(req("drop", prompt="word " * 100, max_tokens=100))
    for _ in range(3):
        engine.step()
    used_before = engine.blocks.num_used_blocks
    engine.abort(["drop"])
    assert engine.blocks.num_used_blocks < used_before
    deltas = {d.request_id: d for d in engine.step()}
    assert deltas["drop"].finish_reason == "abort" and deltas["keep"].finish_reason is None
    engine.abort(["keep"])
    engine.step()
    assert engine.blocks.num_used_blocks == 0 and not engine.has_work()


def test_per_request_errors_leave_the_batch_running(tokenizer):
    engine = sim_engine(tokenizer)
    engine.add_request(req("fine", max_tokens=4))
    too_long = engine.add_request(req("too-long", prompt="word " * 2000))
    assert too_long.code == "context_length_exceeded" and "1024" in too_long.message
    assert engine.add_request(req("budget", max_tokens=1020, prompt="word " * 10)).code == "context_length_exceeded"
    assert engine.add_request(req("fine", max_tokens=4)).code == "duplicate_request_id"
    bad_ids = GenerateRequest("bad-ids", SamplingParams(), prompt_token_ids=[1, 10**9])
    assert engine.add_request(bad_ids).code == "invalid_prompt"
    empty = GenerateRequest("empty", SamplingParams(), prompt_token_ids=[])
    assert engine.add_request(empty).code == "context_length_exceeded"
    assert run_to_completion(engine)["fine"][0] and not engine.requests


def test_deadline_expiry_is_a_per_request_error(tokenizer):
    now = [1000.0]
    engine = Engine(SimRunner(0, tokenizer.vocab_size), tokenizer, SchedulerConfig(), 1024, clock=lambda: now[0])
    engine.add_request(GenerateRequest("late", SamplingParams(max_tokens=50), prompt="hi", deadline=1001.0))
    engine.add_request(req("on-time", max_tokens=50))
    engine.step()
    now[0] = 1002.0
    engine.step()
    [rejection] = engine.take_rejections()
    assert (rejection.request_id, rejection.code) == ("late", "timeout")
    assert list(engine.requests) == ["on-time"]


def test_stop_strings_stop_tokens_and_n(tokenizer):
    engine = sim_engine(tokenizer)
    engine.add_request(req("probe", max_tokens=12))
    probe = run_to_completion(engine)["probe"][0]
    probe_text = tokenizer.decode(probe)
    stop_token = probe[5]
    engine.add_request(req("by-token", max_tokens=12, stop_token_ids=[stop_token]))
    word = probe_text[len(probe_text) // 2 : len(probe_text) // 2 + 3]
    engine.add_request(req("by-string", max_tokens=12, stop=[word]))
    engine.add_request(req("many", max_tokens=4, n=3))
    texts: dict[str, str] = {}
    reasons = {}
    while engine.has_work():
        for d in engine.step():
            texts[d.request_id] = texts.get(d.request_id, "") + d.text
            if d.finish_reason:
                reasons[(d.request_id, d.index)] = (d.finish_reason, d.stop_reason)
    assert reasons[("by-token", 0)] == ("stop", stop_token)
    assert reasons[("by-string", 0)] == ("stop", word)
    assert texts["by-string"] == probe_text[: probe_text.index(word)]
    assert {k for k in reasons if k[0] == "many"} == {("many", 0), ("many", 1), ("many", 2)}


def test_chat_requests_use_the_template(tokenizer):
    engine = sim_engine(tokenizer)
    msg = GenerateRequest("c", SamplingParams(max_tokens=3), messages=[ChatMessage("user", "hi")])
    assert engine.add_request(msg) is None
    expected = tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert engine.requests["c"][0].num_prompt_tokens == len(expected)


def test_paged_kv_under_pressure_preempts_and_gives_the_same_tokens(tokenizer):
    requests = [req(f"r{i}", prompt=PROMPTS[i % 8] + " x" * (i % 5), max_tokens=12, temperature=0.0) for i in range(64)]
    roomy = torch_engine(tokenizer)
    for r in requests:
        roomy.add_request(r)
    expected = run_to_completion(roomy)
    tight = torch_engine(tokenizer, num_kv_blocks=16, block_size=4)  # 64 tokens: two or three sequences at a time
    for r in requests:
        assert tight.add_request(r) is None
    got = run_to_completion(tight)
    assert tight.scheduler.num_preemptions > 0
    assert got == expected
    assert tight.blocks.num_used_blocks == 0


def test_the_same_seed_gives_the_same_tokens_alone_and_in_a_busy_batch(tokenizer):
    seeded = req("seeded", prompt="Once upon a time", max_tokens=16, temperature=0.9, top_p=0.95, seed=1234)
    alone = torch_engine(tokenizer)
    alone.add_request(seeded)
    expected = run_to_completion(alone)["seeded"][0]
    busy = torch_engine(tokenizer)
    for i in range(12):
        busy.add_request(req(f"noise{i}", prompt=PROMPTS[i % 8], max_tokens=20, temperature=1.0, seed=i if i % 2 else None))
    busy.step()
    busy.add_request(seeded)
    assert run_to_completion(busy)["seeded"][0] == expected
    other_seed = torch_engine(tokenizer)
    other_seed.add_request(req("seeded", prompt="Once upon a time", max_tokens=16, temperature=0.9, top_p=0.95, seed=99))
    assert run_to_completion(other_seed)["seeded"][0] != expected


def test_prefix_cache_hits_are_counted_once_per_admitted_sequence(tokenizer):
    engine = sim_engine(tokenizer, block_size=4)
    prompt = "word " * 40
    engine.add_request(req("first", prompt=prompt, max_tokens=2))
    run_to_completion(engine)
    assert engine.blocks.prefix_hit_tokens == 0
    engine.add_request(req("second", prompt=prompt, max_tokens=2))
    hit = None
    while engine.has_work():
        for d in engine.step():
            hit = d.cached_tokens
    assert hit is not None and hit > 0 and hit % 4 == 0
    assert engine.blocks.prefix_hit_tokens == hit
