"""A model directory's tokenizer: `tokenizers` for the text, its config files for special tokens and the chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

from gpu_worker.chat_template import ChatTemplate, NoChatTemplateError, pick_template

# tokenizers caches the pieces of each word it has split, up to 10,000 words, and never evicts: encoding the soak's
# prompts ("soak 0.8444218515250481") grew a process by 4.7 MB over the first ~10,000 and not at all after, which
# a 10-minute soak read as a slope (a worker meets 10,000 such words after about 7 minutes). At 1024 words the cache
# holds under half a MB; 300 encodes of a 1800-character text took 0.20 s against 0.16 s with the default.
WORD_CACHE_ENTRIES = 1024
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TokenizerLoadError(ValueError):
    """The model directory's tokenizer files are missing or unreadable."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path} does not hold a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """tokenizer_config writes special tokens either as strings or as AddedToken dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


@dataclass(frozen=True)
class Tokenizer:
    """Encode, decode and chat-render for one model. Build it with `Tokenizer.from_dir(model_dir)`."""

    backend: HFTokenizer = field(repr=False)
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the chat template sees them
    eos_token_ids: tuple[int, ...]
    chat_template: ChatTemplate | None = field(repr=False)
    special_token_ids: frozenset[int] = field(repr=False)  # what decode(skip_special_tokens=True) drops
    byte_fallback_ids: frozenset[int] = field(repr=False)  # <0x00>..<0xFF> of a byte-fallback BPE, else empty

    @property
    def decode_is_concatenative(self) -> bool:
        """A byte-level decoder: decode(a + b) == decode(a) + decode(b) whenever decode(a) ends a whole character."""
        return isinstance(self.backend.decoder, decoders.ByteLevel)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerLoadError(f"{tokenizer_file} not found: the model needs a fast tokenizer (tokenizer.json)")
        try:
            backend = HFTokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerLoadError(f"cannot load {tokenizer_file}: {exc}") from exc
        resize_word_cache = getattr(backend.model, "_resize_cache", None)  # BPE and WordPiece-like models have one
        if resize_word_cache is not None:
            resize_word_cache(WORD_CACHE_ENTRIES)
        config = _read_json(model_dir / "tokenizer_config.json")
        special_tokens = {
            key: content for key in SPECIAL_TOKEN_KEYS if (content := _token_content(config.get(key))) is not None
        }
        template_file = model_dir / "chat_template.jinja"
        source = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        source = source or pick_template(config.get("chat_template"))
        template = ChatTemplate(source, special_tokens) if source else None
        eos_ids = _ids(_read_json(model_dir / "generation_config.json").get("eos_token_id"))
        eos_ids += _ids(_read_json(model_dir / "config.json").get("eos_token_id"))
        if "eos_token" in special_tokens and (eos_id := backend.token_to_id(special_tokens["eos_token"])) is not None:
            eos_ids.append(eos_id)
        special_ids = frozenset(i for i, added in backend.get_added_tokens_decoder().items() if added.special)
        byte_ids: frozenset[int] = frozenset()
        if getattr(backend.model, "byte_fallback", False):
            found = (backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
            byte_ids = frozenset(token_id for token_id in found if token_id is not None)
        return cls(backend, special_tokens, tuple(dict.fromkeys(eos_ids)), template, special_ids, byte_ids)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @property
    def bos_token_id(self) -> int | None:
        bos = self.special_tokens.get("bos_token")
        return None if bos is None else self.backend.token_to_id(bos)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens the tokenizer's post-processor adds e.g. BOS."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    @cached_property
    def _token_texts(self) -> tuple[str, ...]:
        ids = [[i] for i in range(self.vocab_size)]
        return tuple(self.backend.decode_batch(ids, skip_special_tokens=False))

    def token_text(self, token_id: int) -> str:
        """The text of one token on its own, for logprobs output ("\ufffd" for a partial UTF-8 byte token)."""
        if 0 <= token_id < self.vocab_size:
            return self._token_texts[token_id]
        return ""

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if self.chat_template is None:
            raise NoChatTemplateError(
                "this model has no chat template (no chat_template in tokenizer_config.json and no "
                "chat_template.jinja): use the completions endpoint with a plain prompt"
            )
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt)

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """The rendered template already carries its special tokens, so none are added (as transformers does)."""
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)
