"""What the scheduler hands a runner for one step, and what the runner hands back."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import SamplingParams


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """One sequence's share of a step: `token_ids` are computed at positions start_pos, start_pos + 1, ..."""

    seq_id: int
    token_ids: list[int]
    start_pos: int  # tokens of this sequence already in the KV cache
    block_table: list[int]  # covers at least start_pos + len(token_ids) slots
    sample: bool  # this chunk ends the known tokens, so a next token is sampled
    sampling: SamplingParams | None = None  # set when sample is True
    output_token_ids: tuple[int, ...] = ()  # generated so far: penalties and min_tokens need them
    eos_token_ids: tuple[int, ...] = ()  # masked while fewer than min_tokens were generated
    seed_offset: int = 0  # added to sampling.seed: choice i of an n>1 request uses seed + i


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    logprob: float | None = None  # of the chosen token, when the request asked for logprobs
    top: list[tuple[int, float]] | None = None  # the sampling.logprobs most likely (token_id, logprob)
