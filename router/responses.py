"""OpenAI's response objects: completions and chat, whole and as SSE chunks, with usage and logprobs."""

from __future__ import annotations

import json
import math
from typing import Any

from protocol.messages import TokenLogprob
from router.stream import PendingDelta

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"
_LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _LOGPROB_FLOOR


class ResponseShape:
    """Builds the objects of one response; `chat` picks the chat or the completions flavour."""

    def __init__(self, chat: bool, response_id: str, created: int, model: str, logprobs: bool) -> None:
        self.chat = chat
        self.id = response_id
        self.created = created
        self.model = model
        self.logprobs = logprobs
        self._text_offset: dict[int, int] = {}  # completions logprobs: characters emitted so far per choice

    def whole(self, choices: list[PendingDelta], usage: dict[str, int]) -> dict[str, Any]:
        body = []
        for choice in choices:
            item: dict[str, Any] = {"index": choice.index}
            if self.chat:
                item["message"] = {"role": "assistant", "content": choice.text}
            else:
                item["text"] = choice.text
            item["logprobs"] = self._logprobs(choice)
            item["finish_reason"] = choice.finish_reason
            item["stop_reason"] = choice.stop_reason
            body.append(item)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": body, "usage": usage}

    def role_chunk(self, index: int, with_usage: bool) -> dict[str, Any]:
        """Chat streams open each choice with the assistant role, as OpenAI does."""
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        return self._chunk([choice], with_usage)

    def chunk(self, deltas: list[PendingDelta], with_usage: bool) -> dict[str, Any]:
        choices = []
        for delta in deltas:
            item: dict[str, Any] = {"index": delta.index}
            if self.chat:
                item["delta"] = {"content": delta.text} if delta.text or delta.finish_reason is None else {}
            else:
                item["text"] = delta.text
            item["logprobs"] = self._logprobs(delta)
            item["finish_reason"] = delta.finish_reason
            if delta.finish_reason is not None:
                item["stop_reason"] = delta.stop_reason
            choices.append(item)
        return self._chunk(choices, with_usage)

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        chunk = self._chunk([], True)
        chunk["usage"] = usage
        return chunk

    def _chunk(self, choices: list[dict[str, Any]], with_usage: bool) -> dict[str, Any]:
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.model, "choices": choices}
        if with_usage:
            chunk["usage"] = None
        return chunk

    def _logprobs(self, delta: PendingDelta) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        entries = delta.logprobs or []
        return self._chat_logprobs(entries) if self.chat else self._completion_logprobs(delta.index, entries)

    @staticmethod
    def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
        return {"content": [
            {"token": e.token, "logprob": _finite(e.logprob), "bytes": list(e.token.encode()),
             "top_logprobs": [{"token": t.token, "logprob": _finite(t.logprob), "bytes": list(t.token.encode())}
                              for t in e.top]}
            for e in entries
        ]}

    def _completion_logprobs(self, index: int, entries: list[TokenLogprob]) -> dict[str, Any]:
        offset = self._text_offset.get(index, 0)
        offsets = []
        for e in entries:
            offsets.append(offset)
            offset += len(e.token)
        self._text_offset[index] = offset
        return {
            "tokens": [e.token for e in entries],
            "token_logprobs": [_finite(e.logprob) for e in entries],
            "top_logprobs": [{t.token: _finite(t.logprob) for t in e.top} for e in entries],
            "text_offset": offsets,
        }
