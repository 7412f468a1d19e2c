"""Incremental detokenization of one sequence's output tokens, with stop strings.

Streamed deltas plus `finish()` concatenate to exactly `tokenizer.decode(all_ids, skip_special_tokens=...)`, or to
its prefix up to the first stop string. Each push decodes only a short window of recent tokens:

* the window starts at a token whose text was already sent (so decoder effects on a first token, like Metaspace's
  leading-space strip, hit the old and the new window alike), never at a dropped special token;
* text ending in U+FFFD waits: it may be a UTF-8 character whose remaining bytes are in the next tokens;
* a trailing run of byte-fallback tokens (<0xE6><0x97>...) waits until the run ends, since the ByteFallback decoder
  turns a whole run into U+FFFDs when any byte of it is invalid;
* with a byte-level decoder (concatenative), the next window's start text is the new text itself: one decode a push.

Text that might be the start of a stop string is then held back (the longest stop's length - 1 characters) until it
is known not to be one, unless the stop string is to be included in the output anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_worker.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True, slots=True)
class DetokenizerUpdate:
    text: str  # new text to send, possibly ""
    stop: str | None = None  # the stop string that ended the sequence, if one was hit


_NOTHING = DetokenizerUpdate("")


class IncrementalDetokenizer:
    """Feed it output token ids as they are sampled; it hands back the text that is safe to send so far."""

    __slots__ = ("_decode", "_concatenative", "_skip_special", "_dropped_ids", "_byte_ids", "_ids", "_prefix", "_read", "_prefix_text",
                 "_decoded_len", "_stops", "_include_stop", "_hold", "_held", "_tail_len", "_tail", "_stopped")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, stop: list[str] | tuple[str, ...] = (),
                 include_stop_str_in_output: bool = False) -> None:
        self._decode = tokenizer.backend.decode
        self._concatenative = tokenizer.decode_is_concatenative
        self._skip_special = skip_special_tokens
        self._dropped_ids = tokenizer.special_token_ids if skip_special_tokens else frozenset()
        self._byte_ids = tokenizer.byte_fallback_ids
        self._ids: list[int] = []
        self._prefix = 0  # the window of tokens decoded each push starts here
        self._read = 0  # tokens before this have had their text decoded and counted in _decoded_len
        self._prefix_text = ""  # decode(ids[_prefix:_read])
        self._decoded_len = 0  # characters of the full decode produced so far (sent or held)
        self._stops = tuple(s for s in stop if s)
        self._include_stop = include_stop_str_in_output
        longest = max(map(len, self._stops), default=1)
        # Including the stop string means nothing needs holding back, since text before the stop's end is sent either
        # way; but a stop may then start in text already sent, so the last longest-1 sent characters are kept.
        self._hold = 0 if include_stop_str_in_output else longest - 1
        self._held = ""
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
        new_text = self._decode_new()
        if not new_text:
            return _NOTHING
        return self._release(self._held + new_text if self._held else new_text, final=False)

    def finish(self) -> str:
        """The rest of the text once no more tokens come: held-back text and anything still waiting.

        Stop strings apply to this rest too; `stopped` tells whether one was hit there.
        """
        if self._stopped is not None:
            return ""
        full = self._decode(self._ids, skip_special_tokens=self._skip_special)
        rest = full[self._decoded_len :]
        self._decoded_len = len(full)
        return self._release(self._held + rest, final=True).text

    # ------------------------------------------------------------------ decoding

    def _decode_new(self) -> str:
        ids = self._ids
        end = len(ids)
        if self._byte_ids:
            while end > self._read and ids[end - 1] in self._byte_ids:
                end -= 1
        if end <= self._read:
            return ""
        text = self._decode(ids[self._prefix : end], skip_special_tokens=self._skip_special)
        if text.endswith(REPLACEMENT_CHAR) or len(text) <= len(self._prefix_text):
            return ""
        consistent = text.startswith(self._prefix_text)
        if consistent:
            new_text = text[len(self._prefix_text) :]
        else:  # a decoder this window logic does not model: fall back to the full decode, once
            new_text = self._decode(ids[:end], skip_special_tokens=self._skip_special)[self._decoded_len :]
        if self._concatenative and consistent:
            self._prefix, self._prefix_text = self._read, new_text  # saves decoding the next window's start
        else:
            if ids[self._read] not in self._dropped_ids:
                self._prefix = self._read
            self._prefix_text = self._decode(ids[self._prefix : end], skip_special_tokens=self._skip_special)
        self._read = end
        self._decoded_len += len(new_text)
        return new_text

    # ------------------------------------------------------------------ stop strings

    def _release(self, text: str, final: bool) -> DetokenizerUpdate:
        if self._stops:
            tail = self._tail
            cut = self._find_stop(tail + text if tail else text)
            if cut is not None:
                end, stop = cut
                self._held = ""
                self._stopped = stop
                return DetokenizerUpdate(text[: end - len(tail)], stop)
        if final or self._hold == 0:
            self._held = ""
            if self._tail_len:
                joined = self._tail + text
                self._tail = joined[len(joined) - self._tail_len :] if len(joined) > self._tail_len else joined
            return DetokenizerUpdate(text)
        keep = len(text) - self._hold
        if keep <= 0:
            self._held = text
            return _NOTHING
        self._held = text[keep:]
        return DetokenizerUpdate(text[:keep])

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """(end of the text to send, stop string) for the stop string completed first in `text`.

        "First" is by where the stop string ends (ties: the longer one), which does not depend on how the text was
        split into pushes: every stop string that ended earlier was found in an earlier push.
        """
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (best is None or (at + len(stop), at) < best[:2]):
                best = (at + len(stop), at, stop)
        if best is None:
            return None
        end, start, stop = best
        return (end if self._include_stop else start), stop
