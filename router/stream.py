"""One request's outputs on their way from the receive task to its HTTP handler.

The receive task calls `push` and never waits: if the handler has not taken the previous delta of a choice yet, the
new one is merged into it, so a slow client costs one pending delta per choice, never a growing queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protocol.messages import GenerateRequest, SequenceDelta, TokenLogprob
from router.errors import ApiError


@dataclass
class PendingDelta:
    """Everything one choice produced since the handler last looked."""

    index: int
    token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def visible(self) -> bool:
        """Whether a client would see anything of it: tokens whose text the detokenizer still holds back are not."""
        return bool(self.text_parts) or self.logprobs is not None or self.finish_reason is not None

    def absorb(self, later: PendingDelta) -> None:
        """Append what the same choice produced later (for a non-streamed response)."""
        self.token_ids.extend(later.token_ids)
        self.text_parts.extend(later.text_parts)
        if later.logprobs is not None:
            self.logprobs = (self.logprobs or []) + later.logprobs
        if later.finish_reason is not None:
            self.finish_reason = later.finish_reason
            self.stop_reason = later.stop_reason

    def merge(self, delta: SequenceDelta) -> None:
        self.token_ids.extend(delta.token_ids)
        if delta.text:
            self.text_parts.append(delta.text)
        if delta.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.stop_reason = delta.stop_reason


class RequestStream:
    """The router's record of one admitted request: where it runs, what arrived, and how it ended."""

    def __init__(self, request: GenerateRequest, *, admitted_at: float) -> None:
        self.request = request
        self.request_id = request.request_id
        self.n = request.sampling.n
        self.admitted_at = admitted_at
        self.dispatched_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.worker_id: int | None = None  # set while dispatched to a worker
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens: dict[int, int] = {}
        self.error: ApiError | None = None
        self.delivered = False  # the handler took visible output: from then on the request cannot start over
        self._pending: dict[int, PendingDelta] = {}
        self._finished: set[int] = set()
        self._wakeup = asyncio.Event()

    @property
    def started(self) -> bool:
        return self.first_token_at is not None

    @property
    def finished(self) -> bool:
        return self.error is not None or len(self._finished) >= self.n

    def push(self, delta: SequenceDelta, now: float) -> None:
        if self.finished or not 0 <= delta.index < self.n:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.prompt_tokens = delta.prompt_tokens
        self.cached_tokens = delta.cached_tokens
        self.completion_tokens[delta.index] = delta.completion_tokens
        pending = self._pending.get(delta.index)
        if pending is None:
            pending = self._pending[delta.index] = PendingDelta(delta.index)
        pending.merge(delta)
        if delta.finish_reason is not None:
            self._finished.add(delta.index)
        self._wakeup.set()

    def restart(self) -> None:
        """Back to unstarted, after its worker died before the handler took anything: what arrived from that worker
        is dropped, and the request runs again from the start on another."""
        self.worker_id = None
        self.first_token_at = self.last_token_at = None
        self.prompt_tokens = self.cached_tokens = 0
        self.completion_tokens.clear()
        self._pending.clear()
        self._finished.clear()

    def fail(self, error: ApiError) -> None:
        """End the request with an error; whatever was pending is dropped."""
        if self.finished:
            return
        self.error = error
        self._pending.clear()
        self._wakeup.set()

    def take(self) -> list[PendingDelta]:
        """What arrived since the last call, one merged delta per choice, in choice order. A delta a client would not
        see yet stays pending, so that the text its tokens make later merges into it."""
        batch = [self._pending.pop(i) for i in sorted(self._pending) if self._pending[i].visible]
        self.delivered = self.delivered or bool(batch)
        if not self.finished:
            self._wakeup.clear()
        return batch

    async def wait(self) -> None:
        """Until there is something to take, or the request finished or failed."""
        await self._wakeup.wait()

    @property
    def usage(self) -> dict[str, int]:
        completion = sum(self.completion_tokens.values())
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        return usage
