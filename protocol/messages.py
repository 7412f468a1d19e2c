"""One typed class per wire message between the router and its workers.

Every message is a frozen dataclass. Its fields are plain msgpack types (int, float, str, bool, None, lists) or other
message structs, so the codec can check each frame against these annotations. `SequenceDelta` alone is no wire
struct: it is one row of a columnar `StepOutputs`. Nothing here imports torch or aiohttp.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

PROTOCOL_VERSION = 2

FINISH_REASONS = ("stop", "length", "abort")


# ----------------------------------------------------------------------------- structs used inside messages


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling settings, already validated by the router."""

    max_tokens: int | None = 16  # None: until the context is full
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def problem(self) -> str | None:
        """What makes these settings unusable, or None. The router never sends such values, but a frame that
        decodes is only well-typed: a worker checks this before it takes a request."""
        finite = (self.temperature, self.top_p, self.presence_penalty, self.frequency_penalty, self.repetition_penalty)
        checks = [
            (self.n >= 1, "n must be >= 1"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be >= 1"),
            (self.min_tokens >= 0, "min_tokens must be >= 0"),
            (all(math.isfinite(v) for v in finite), "sampling values must be finite"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k is None or self.top_k >= 1, "top_k must be >= 1"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.logprobs is None or self.logprobs >= 0, "logprobs must be >= 0"),
            (all(self.stop), "stop strings must not be empty"),
            (all(t >= 0 for t in self.stop_token_ids), "stop token ids must be >= 0"),
        ]
        return next((message for ok, message in checks if not ok), None)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's logprob and the `top` most likely alternatives at that position."""

    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob]


class SequenceDelta(NamedTuple):
    """What one sequence (one choice of one request) produced in one engine step: one row of a StepOutputs.

    A NamedTuple rather than a frozen dataclass because the engine builds one per running sequence per step."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None


# ----------------------------------------------------------------------------- router -> worker


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """Exactly one of `prompt`, `prompt_token_ids` and `messages` is set."""

    request_id: str
    sampling: SamplingParams
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    deadline: float | None = None  # unix time; the worker aborts the request past it


@dataclass(frozen=True, slots=True)
class Abort:
    request_ids: list[str]


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop taking new requests; finish the running ones."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Abort what is left, flush the last outputs, answer Goodbye, then exit."""


# ----------------------------------------------------------------------------- worker -> router


@dataclass(frozen=True, slots=True)
class Handshake:
    """Sent once, over the request DEALER, after the model is loaded and warmed up."""

    worker_id: int
    epoch: int
    pid: int
    device: str
    model_name: str
    context_length: int
    kv_capacity_tokens: int
    max_running: int
    has_chat_template: bool
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class StartupFailed:
    """The worker cannot start: the message names the cause. The process exits non-zero right after."""

    worker_id: int
    epoch: int
    message: str


@dataclass(frozen=True, slots=True)
class StepOutputs:
    """One frame per engine step, carrying every sequence that produced something in that step.

    Columnar: one list per SequenceDelta field, row i of every column belonging to the same sequence, so the codec
    checks a column at a time instead of building and checking a struct per sequence."""

    worker_id: int
    epoch: int
    step: int
    request_ids: list[str]
    indexes: list[int]
    token_ids: list[list[int]]
    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    logprobs: list[list[TokenLogprob] | None]
    stop_reasons: list[str | int | None]

    def __post_init__(self) -> None:
        lengths = {len(column) for column in self._columns()}
        if len(lengths) > 1:
            raise ValueError(f"StepOutputs columns differ in length: {sorted(lengths)}")

    @classmethod
    def from_deltas(cls, worker_id: int, epoch: int, step: int, deltas: list[SequenceDelta]) -> StepOutputs:
        columns = [list(column) for column in zip(*deltas)] or [[] for _ in SequenceDelta._fields]
        return cls(worker_id, epoch, step, *columns)

    def deltas(self) -> Iterator[SequenceDelta]:
        """The rows, one per sequence, in frame order."""
        return map(SequenceDelta._make, zip(*self._columns()))

    def _columns(self) -> tuple[list, ...]:
        return (self.request_ids, self.indexes, self.token_ids, self.texts, self.finish_reasons, self.prompt_tokens,
                self.completion_tokens, self.cached_tokens, self.logprobs, self.stop_reasons)


@dataclass(frozen=True, slots=True)
class RequestError:
    """One request failed; every other request on the worker keeps going."""

    worker_id: int
    epoch: int
    request_id: str
    code: str  # an OpenAI-style error code, e.g. "context_length_exceeded"
    message: str
    status: int = 400


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Sent at least every heartbeat interval, and doubles as the heartbeat."""

    worker_id: int
    epoch: int
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    last_step_ms: float
    steps_done: int
    bad_frames: int
    prefix_cache_hit_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The answer to Shutdown: everything the worker will ever send has been sent."""

    worker_id: int
    epoch: int


TO_WORKER = (GenerateRequest, Abort, Drain, Shutdown)
TO_ROUTER = (Handshake, StartupFailed, StepOutputs, RequestError, WorkerStats, Goodbye)
