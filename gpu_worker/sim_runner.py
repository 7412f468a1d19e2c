"""`--model sim:STEP_MS`: a stand-in for the model that costs no compute.

Each step sleeps STEP_MS (the CPU is free meanwhile, as it is while a GPU works) and then emits, for every sampling
sequence, a token that depends only on the sequence's last token and position. The same request therefore gives the
same tokens on any worker, alone or in any batch. It exists to measure the router and process scaling without GPUs,
and for fault tests; it is never presented as a real model.
"""

from __future__ import annotations

import time

from gpu_worker.batch import SampledToken, ScheduledChunk

SIM_CONTEXT_LENGTH = 4096


class SimRunner:
    def __init__(self, step_ms: float, vocab_size: int, num_kv_blocks: int = 16384, block_size: int = 16) -> None:
        if step_ms < 0:
            raise ValueError(f"sim step time must be >= 0 ms, got {step_ms}")
        self.step_s = step_ms / 1000.0
        self.num_kv_blocks = num_kv_blocks
        self.block_size = block_size
        # Ids past the first quarter of a BPE vocabulary are merges, i.e. whole word pieces, never special tokens.
        self._low = vocab_size // 4
        self._span = vocab_size - self._low

    def run(self, chunks: list[ScheduledChunk]) -> list[SampledToken]:
        if self.step_s > 0:
            time.sleep(self.step_s)
        return [self._next(c) for c in chunks if c.sample]

    def release(self, seq_id: int) -> None:
        pass

    def _next(self, chunk: ScheduledChunk) -> SampledToken:
        position = chunk.start_pos + len(chunk.token_ids)
        token = self._low + (chunk.token_ids[-1] * 7919 + position * 104729 + chunk.seed_offset) % self._span
        if chunk.sampling is not None and chunk.sampling.logprobs is not None:
            return SampledToken(token, 0.0, [(token, 0.0)])  # the sim is certain of its choice
        return SampledToken(token)
