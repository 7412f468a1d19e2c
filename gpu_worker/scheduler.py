"""Continuous batching: each step mixes the decodes of running sequences with (chunked) prefills of waiting ones.

Every sequence has `num_computed_tokens`; a step computes some of the rest. Decode, prefill, a chunk of a long prompt
and the recompute of a preempted sequence are all the same operation. Running sequences go first; waiting ones are
admitted under the token budget, the block budget and `max_running`. A step that decodes may take at most
`max_prefill_tokens_while_decoding` prompt tokens (None: no cap), so that a burst of new prompts is spread over a few
short steps instead of one long one that every running stream waits for; while more sequences wait than run, the cap
is lifted. When blocks run out, the most recently
admitted running sequence is preempted: its blocks are freed and it is recomputed later (with the prefix cache's help).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gpu_worker.block_manager import BlockManager
from gpu_worker.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_running: int = 256
    max_batched_tokens: int = 2048
    max_prefill_tokens_while_decoding: int | None = None

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {self.max_running}")
        if self.max_batched_tokens < 1:
            raise ValueError(f"max_batched_tokens must be >= 1, got {self.max_batched_tokens}")
        cap = self.max_prefill_tokens_while_decoding
        if cap is not None and cap < 1:
            raise ValueError(f"max_prefill_tokens_while_decoding must be >= 1, got {cap}")


@dataclass(frozen=True, slots=True)
class Scheduled:
    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Scheduled]:
        budget = self.config.max_batched_tokens
        prefill_budget = self._prefill_budget()
        batch: list[Scheduled] = []
        preemptions_before = self.num_preemptions
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            uncomputed = seq.num_uncomputed_tokens
            n = min(uncomputed, budget) if uncomputed == 1 else min(uncomputed, budget, prefill_budget)
            if n == 0:  # a chunked prompt waits for a step with room
                i += 1
                continue
            if not self._make_room(seq, seq.num_computed_tokens + n):
                continue  # seq itself was preempted, and self.running shrank under it
            batch.append(Scheduled(seq, n))
            budget -= n
            if uncomputed > 1:
                prefill_budget -= n
            i += 1
        if self.num_preemptions == preemptions_before:
            self._admit_waiting(batch, min(budget, prefill_budget))
        return batch

    def finish(self, seq: Sequence) -> None:
        """Take a finished or aborted sequence out of the queues and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        self.blocks.free(seq)

    # ------------------------------------------------------------------ internals

    def _prefill_budget(self) -> int:
        """Prompt tokens this step may take: the cap while some running sequence decodes, unless more sequences
        wait than run. A batch under half full gains more from filling up in one long step than its few streams lose
        to it: at 64 streams of the 97M model that cut TTFT p99 from 1.10-1.34 s to 0.98-1.10 s, ITL p99 unchanged."""
        cap = self.config.max_prefill_tokens_while_decoding
        decoding = any(seq.num_uncomputed_tokens == 1 for seq in self.running)
        if cap is None or not decoding or len(self.waiting) > len(self.running):
            return self.config.max_batched_tokens
        return cap

    def _admit_waiting(self, batch: list[Scheduled], budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_running:
            seq = self.waiting[0]
            hit = self.blocks.take_cached_prefix(seq)
            seq.num_computed_tokens = hit
            n = min(seq.num_uncomputed_tokens, budget)
            if not self.blocks.allocate(seq, seq.num_computed_tokens + n):
                self.blocks.free(seq)  # a waiting sequence holds no blocks, cached prefix included
                seq.num_computed_tokens = 0
                break
            self.blocks.prefix_hit_tokens += hit
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = hit
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.append(Scheduled(seq, n))
            budget -= n

    def _make_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Allocate blocks for `seq`, preempting the newest running sequences if needed.

        Returns False if `seq` itself had to be preempted.
        """
        while not self.blocks.allocate(seq, num_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
