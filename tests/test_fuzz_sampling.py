"""The worker's own check of sampling values (SamplingParams.problem plus its n and logprobs bounds): whatever it
lets through runs on the real torch model without failing the step, and what it refuses is what once crashed the
worker or failed every request batched with it."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_worker.build import build_engine
from gpu_worker.config import WorkerConfig
from gpu_worker.worker import WorkerLoop
from protocol.messages import GenerateRequest, SamplingParams
from protocol.sockets import Addresses

ADDRESSES = Addresses("ipc:///nonexistent/requests", "ipc:///nonexistent/outputs")


@pytest.fixture(scope="module")
def loop() -> WorkerLoop:
    config = WorkerConfig(ADDRESSES, model="builtin", threads=1, max_running=8)
    return WorkerLoop(config, build_engine(config), dealer=None, push=None)


any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
sampling = st.builds(
    SamplingParams,
    max_tokens=st.one_of(st.none(), st.integers(-2, 6)), min_tokens=st.integers(-2, 3),
    temperature=any_float, top_p=any_float, top_k=st.one_of(st.none(), st.integers(-3, 10_000)),
    presence_penalty=any_float, frequency_penalty=any_float, repetition_penalty=any_float,
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), n=st.integers(-2, 10),
    stop=st.lists(st.text(max_size=3), max_size=2), stop_token_ids=st.lists(st.integers(-2, 9000), max_size=2),
    ignore_eos=st.booleans(), logprobs=st.one_of(st.none(), st.integers(-2, 9000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=sampling)
def test_accepted_sampling_values_never_fail_a_step(loop, params):
    request = GenerateRequest("r", params, prompt="def main():", deadline=math.inf)
    engine = loop.engine
    if loop._sampling_problem(request) is not None:
        return
    rejection = engine.add_request(request)
    if rejection is not None:
        assert rejection.code == "context_length_exceeded" or rejection.code == "invalid_prompt", rejection
        return
    for _ in range(8):
        if not engine.has_work():
            break
        engine.step()
    engine.abort(["r"])
    engine.step()
    assert [r for r in engine.take_rejections() if r.code == "internal_error"] == []
    assert not engine.has_work()


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 9), ("max_tokens", 0), ("min_tokens", -1), ("temperature", math.nan), ("temperature", -1.0),
    ("top_p", 0.0), ("top_k", -7), ("presence_penalty", math.inf), ("repetition_penalty", 0.0), ("logprobs", -1),
    ("logprobs", 10**6), ("stop", [""]), ("stop_token_ids", [-1]),
])
def test_absurd_values_are_refused(loop, field, value):
    params = SamplingParams(**{field: value})
    assert loop._sampling_problem(GenerateRequest("r", params, prompt="x")) is not None
