"""Incremental detokenization of one sequence's output tokens, with stop strings.

Streaming deltas concatenate to exactly `tokenizer.decode(all_ids, skip_special_tokens=...)` once `finish()` is added
(or to its prefix up to a stop string). Text that might be the start of a stop string is held back until it is
known not to be one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from gpu_worker.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class DetokenizerUpdate:
    text: str  # new text to send, possibly ""
    stop: str | None = None  # the stop string that ended the sequence, if one was hit


_NOTHING = DetokenizerUpdate("")


class IncrementalDetokenizer:
    """Feed it output token ids as they are sampled; it hands back the text that is safe to send so far."""

    __slots__ = ("_backend", "_skip_special", "_stream", "_ids", "_sent", "_held", "_stops",
                 "_hold", "_tail", "_tail_len", "_include_stop", "_stopped")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, stop: list[str] | tuple[str, ...] = (),
                 include_stop_str_in_output: bool = False) -> None:
        self._backend = tokenizer.backend
        self._skip_special = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._ids: list[int] = []
        self._sent: list[str] = []  # every piece handed out so far, joined only in finish()
        self._held = ""  # decoded text not yet sent: it may be the start of a stop string
        self._stops = tuple(s for s in stop if s)
        self._include_stop = include_stop_str_in_output
        longest = max(map(len, self._stops), default=1)
        # Including the stop string means nothing needs holding back, since text before the stop's end is sent either
        # way; but a stop may then start in text already sent, so the last longest-1 sent characters are kept.
        self._hold = 0 if include_stop_str_in_output else longest - 1
        self._tail_len = longest - 1 if include_stop_str_in_output else 0
        self._tail = ""
        self._stopped: str | None = None

    @property
    def stopped(self) -> str | None:
        """The stop string that was hit, if any; after it, pushes return nothing."""
        return self._stopped

    def push(self, token_ids: list[int]) -> DetokenizerUpdate:
        if self._stopped is not None:
            return _NOTHING
        self._ids.extend(token_ids)
        pieces = [piece for tid in token_ids if (piece := self._stream.step(self._backend, tid))]
        if not pieces:
            return _NOTHING
        return self._release(self._held + "".join(pieces) if self._held else "".join(pieces), final=False)

    def finish(self) -> str:
        """The rest of the text once no more tokens come: held-back text and any undecodable tail.

        Also applies the stop strings to that rest; `stopped` tells whether one was hit there.
        """
        if self._stopped is not None:
            return ""
        full = self._backend.decode(self._ids, skip_special_tokens=self._skip_special)
        sent_len = sum(map(len, self._sent))
        return self._release(full[sent_len:], final=True).text

    def _release(self, text: str, final: bool) -> DetokenizerUpdate:
        if self._stops:
            tail = self._tail
            cut = self._find_stop(tail + text if tail else text)
            if cut is not None:
                end, stop = cut
                self._held = ""
                self._stopped = stop
                out = text[: end - len(tail)]
                self._sent.append(out)
                return DetokenizerUpdate(out, stop)
        if final or self._hold == 0:
            self._held = ""
            self._sent.append(text)
            if self._tail_len:
                joined = self._tail + text
                self._tail = joined[len(joined) - self._tail_len :] if len(joined) > self._tail_len else joined
            return DetokenizerUpdate(text)
        keep = len(text) - self._hold
        if keep <= 0:
            self._held = text
            return _NOTHING
        self._held = text[keep:]
        out = text[:keep]
        self._sent.append(out)
        return DetokenizerUpdate(out)

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """(end of the text to send, stop string) for the earliest stop string in `text`."""
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        at, stop = best
        return (at + len(stop) if self._include_stop else at), stop
