"""The engine: requests in, one list of SequenceDeltas out per step. Torch-free; the runner does the model work."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gpu_worker.batch import SampledToken, ScheduledChunk
from gpu_worker.block_manager import BlockManager
from gpu_worker.detokenizer import IncrementalDetokenizer
from gpu_worker.prompt import PromptError, prompt_token_ids
from gpu_worker.scheduler import Scheduled, Scheduler, SchedulerConfig
from gpu_worker.sequence import Request, Sequence, finish_reason
from protocol.messages import GenerateRequest, SequenceDelta, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)


class Runner(Protocol):
    num_kv_blocks: int
    block_size: int

    def run(self, chunks: list[ScheduledChunk]) -> list[SampledToken]: ...

    def release(self, seq_id: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request that failed on its own; every other request keeps going."""

    request_id: str
    code: str
    message: str
    status: int = 400


class Engine:
    def __init__(
        self,
        runner: Runner,
        tokenizer,
        scheduler_config: SchedulerConfig,
        context_length: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        # A lone sequence must always fit in the cache, or preemption could never make room for it.
        self.context_length = min(context_length, runner.num_kv_blocks * runner.block_size)
        self.blocks = BlockManager(runner.num_kv_blocks, runner.block_size)
        self.scheduler = Scheduler(scheduler_config, self.blocks)
        self.clock = clock
        self.requests: dict[str, list[Sequence]] = {}
        self.steps_done = 0
        self.last_step_ms = 0.0
        self._seq_ids = itertools.count()
        self._rejections: list[Rejection] = []
        self._aborted: list[SequenceDelta] = []

    # ------------------------------------------------------------------ requests in

    def add_request(self, req: GenerateRequest) -> Rejection | None:
        if req.request_id in self.requests:
            return Rejection(req.request_id, "duplicate_request_id", f"request id {req.request_id!r} is in use")
        try:
            prompt = prompt_token_ids(self.tokenizer, req)
        except PromptError as exc:
            return Rejection(req.request_id, exc.code, str(exc))
        too_long = self._check_length(len(prompt), req.sampling.max_tokens)
        if too_long is not None:
            return Rejection(req.request_id, "context_length_exceeded", too_long)
        eos = () if req.sampling.ignore_eos else tuple(self.tokenizer.eos_token_ids)
        request = Request(req.request_id, req.sampling, prompt, req.deadline, self.clock(), eos)
        self.requests[req.request_id] = [self._new_sequence(request, i) for i in range(req.sampling.n)]
        for seq in self.requests[req.request_id]:
            self.scheduler.add(seq)
        return None

    def abort(self, request_ids: list[str]) -> None:
        """Free the requests' blocks now; their final deltas (finish_reason "abort") go out with the next step."""
        for request_id in request_ids:
            for seq in self.requests.pop(request_id, ()):
                self.scheduler.finish(seq)
                self.runner.release(seq.seq_id)
                seq.finish_reason = "abort"
                self._aborted.append(self._take_delta(seq))

    def take_rejections(self) -> list[Rejection]:
        rejections, self._rejections = self._rejections, []
        return rejections

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._aborted)

    # ------------------------------------------------------------------ one step

    def step(self) -> list[SequenceDelta]:
        self._expire_deadlines()
        deltas, self._aborted = self._aborted, []
        batch = self.scheduler.schedule()
        if not batch:
            return deltas
        started = time.perf_counter()
        try:
            sampled = self.runner.run([self._chunk(s) for s in batch])
        except Exception:
            log.exception("the model step failed; failing the %d requests in it", len(batch))
            self._fail({s.seq.request_id for s in batch}, "internal_error", "the model step failed", 500)
            return deltas
        samples = iter(sampled)
        for item in batch:
            seq = item.seq
            samples_here = item.samples
            seq.num_computed_tokens += item.num_new_tokens
            self.blocks.register_full_blocks(seq)
            if samples_here:
                self._append(seq, next(samples))
                deltas.append(self._take_delta(seq))
        self.steps_done += 1
        self.last_step_ms = (time.perf_counter() - started) * 1000.0
        return deltas

    # ------------------------------------------------------------------ internals

    def _new_sequence(self, request: Request, index: int) -> Sequence:
        params = request.sampling
        detok = IncrementalDetokenizer(
            self.tokenizer,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
        )
        return Sequence(
            seq_id=next(self._seq_ids),
            request=request,
            index=index,
            token_ids=list(request.prompt_token_ids),
            detokenizer=detok,
            num_prompt_tokens=len(request.prompt_token_ids),
            pending_logprobs=[] if params.logprobs is not None else None,
        )

    def _check_length(self, num_prompt: int, max_tokens: int | None) -> str | None:
        if num_prompt == 0:
            return "the prompt is empty"
        if max_tokens is None and num_prompt >= self.context_length:
            return (
                f"This model's maximum context length is {self.context_length} tokens. However, your prompt has "
                f"{num_prompt} tokens, which leaves no room for the completion. Please reduce the length of the prompt."
            )
        if max_tokens is not None and num_prompt + max_tokens > self.context_length:
            return (
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} in the completion). "
                "Please reduce the length of the prompt or the completion."
            )
        return None

    def _chunk(self, item: Scheduled) -> ScheduledChunk:
        seq = item.seq
        start = seq.num_computed_tokens
        tokens = seq.token_ids[start : start + item.num_new_tokens]
        if not item.samples:
            return ScheduledChunk(seq.seq_id, tokens, start, seq.block_table, False)
        params = seq.sampling
        needs_history = (
            seq.num_output_tokens < params.min_tokens
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
            or params.repetition_penalty != 1.0
        )
        history = tuple(seq.output_token_ids) if needs_history else ()
        return ScheduledChunk(
            seq.seq_id, tokens, start, seq.block_table, True, params, history, seq.request.eos_token_ids, seq.index
        )

    def _append(self, seq: Sequence, sample: SampledToken) -> None:
        token = sample.token_id
        seq.token_ids.append(token)
        seq.pending_token_ids.append(token)
        if seq.pending_logprobs is not None and sample.logprob is not None:
            seq.pending_logprobs.append(self._token_logprob(token, sample))
        update = seq.detokenizer.push([token])
        seq.pending_text += update.text
        reason, stop_reason = finish_reason(seq, token, update.stop, self.context_length)
        if reason is None:
            return
        if update.stop is None:
            seq.pending_text += seq.detokenizer.finish()
            if seq.detokenizer.stopped is not None:  # a stop string completed in the flushed tail
                reason, stop_reason = "stop", seq.detokenizer.stopped
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        self.scheduler.finish(seq)
        self.runner.release(seq.seq_id)
        siblings = self.requests.get(seq.request_id, ())
        if all(s.is_finished for s in siblings):
            self.requests.pop(seq.request_id, None)

    def _token_logprob(self, token: int, sample: SampledToken) -> TokenLogprob:
        text = self.tokenizer.token_text
        top = [TopLogprob(t, text(t), lp) for t, lp in (sample.top or ())]
        return TokenLogprob(token, text(token), sample.logprob, top)

    def _take_delta(self, seq: Sequence) -> SequenceDelta:
        delta = SequenceDelta(
            request_id=seq.request_id,
            index=seq.index,
            token_ids=seq.pending_token_ids,
            text=seq.pending_text,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_output_tokens,
            cached_tokens=seq.num_cached_tokens,
            logprobs=seq.pending_logprobs or None,
            stop_reason=seq.stop_reason,
        )
        seq.pending_token_ids = []
        seq.pending_text = ""
        if seq.pending_logprobs is not None:
            seq.pending_logprobs = []
        return delta

    def _expire_deadlines(self) -> None:
        now = self.clock()
        expired = {
            rid for rid, seqs in self.requests.items() if seqs[0].request.deadline is not None and
            seqs[0].request.deadline <= now
        }
        if expired:
            self._fail(expired, "timeout", "the request passed its deadline on the worker", 504)

    def _fail(self, request_ids: set[str], code: str, message: str, status: int) -> None:
        for request_id in request_ids:
            for seq in self.requests.pop(request_id, ()):
                self.scheduler.finish(seq)
                self.runner.release(seq.seq_id)
            self._rejections.append(Rejection(request_id, code, message, status))
