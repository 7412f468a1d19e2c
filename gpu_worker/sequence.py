"""One sequence: one choice of one request, with its tokens, KV blocks and finish state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocol.messages import SamplingParams, TokenLogprob


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Request:
    """What every choice of one request shares."""

    request_id: str
    sampling: SamplingParams
    prompt_token_ids: list[int]
    deadline: float | None
    arrival: float
    eos_token_ids: tuple[int, ...]


@dataclass(eq=False, slots=True)
class Sequence:
    seq_id: int
    request: Request
    index: int  # the choice number inside its request
    token_ids: list[int]
    detokenizer: object  # gpu_worker.detokenizer.IncrementalDetokenizer
    num_prompt_tokens: int
    num_computed_tokens: int = 0  # tokens whose K/V sit in the cache
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache on first admission
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0  # leading full blocks already published to the prefix cache
    prefix_hash: int | None = None  # hash chain value after those blocks
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    # What this sequence produced since its last delta was sent.
    pending_token_ids: list[int] = field(default_factory=list)
    pending_text: str = ""
    pending_logprobs: list[TokenLogprob] | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def sampling(self) -> SamplingParams:
        return self.request.sampling

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED


def finish_reason(seq: Sequence, token: int, stop_string: str | None, context_length: int) -> tuple[str | None, str | int | None]:
    """Why `seq` stops after appending `token`, as (finish_reason, stop_reason), or (None, None) to go on."""
    params = seq.sampling
    if stop_string is not None:
        return "stop", stop_string
    if seq.num_output_tokens >= params.min_tokens:
        if token in seq.request.eos_token_ids:
            return "stop", None
        if token in params.stop_token_ids:
            return "stop", token
    if seq.num_tokens >= context_length:
        return "length", None
    if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
        return "length", None
    return None, None
