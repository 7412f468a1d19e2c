"""What a benchmark sends: the workload, prompts of exact token lengths, and request bodies."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    input_len: int = 64
    output_len: int = 64
    len_dist: str = "fixed"  # fixed | uniform | normal
    len_spread: float = 0.25  # uniform: L*(1±spread); normal: sd = spread*L
    seed: int = 0
    tokenizer: str | None = None  # a model dir or tokenizer.json: exact-length text prompts; else token-id prompts
    vocab_size: int = 8000  # token-id prompts draw ids from [4, vocab_size)
    endpoint: str = "completions"  # completions | chat
    flavour: str = "openai"  # openai: ignore_eos; transformers: generation_config with eos_token_id -1
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("--input-len and --output-len must be >= 1")
        if self.len_dist not in ("fixed", "uniform", "normal"):
            raise ValueError(f"unknown --len-dist {self.len_dist!r}")
        if self.endpoint == "chat" and self.tokenizer is None:
            raise ValueError("--endpoint chat sends text: give --tokenizer")


class PromptMaker:
    """Random prompts of exactly N tokens: words that are one token each and stay one token when joined."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.words: list[str] = []
        if workload.tokenizer is not None:
            from tokenizers import Tokenizer

            path = workload.tokenizer
            self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path)
            word = re.compile(r"^ [A-Za-z]{2,}$")
            for token_id in range(self.tokenizer.get_vocab_size()):
                text = self.tokenizer.decode([token_id])
                if word.match(text) and self.tokenizer.encode(text, add_special_tokens=False).ids == [token_id]:
                    self.words.append(text)
            if len(self.words) < 50:
                raise ValueError(f"{path}: too few single-token words ({len(self.words)}) to build prompts")

    def prompt(self, rng: random.Random, length: int) -> str | list[int]:
        if not self.words:
            return [rng.randrange(4, self.workload.vocab_size) for _ in range(length)]
        for _ in range(10):
            text = "".join(rng.choices(self.words, k=length))
            if len(self.tokenizer.encode(text, add_special_tokens=False).ids) == length:
                return text
        raise ValueError(f"could not build a prompt of exactly {length} tokens")


def draw_length(rng: random.Random, mean: int, dist: str, spread: float) -> int:
    if dist == "uniform":
        return max(1, round(rng.uniform(mean * (1 - spread), mean * (1 + spread))))
    if dist == "normal":
        return max(1, round(rng.gauss(mean, spread * mean)))
    return mean


def request_body(workload: Workload, model: str, prompt: str | list[int], max_tokens: int) -> bytes:
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": workload.temperature,
                  "stream_options": {"include_usage": True}}
    if workload.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if workload.flavour == "transformers":  # it rejects unknown fields; eos_token_id -1 disables EOS
        body["generation_config"] = json.dumps({"max_new_tokens": max_tokens, "eos_token_id": -1,
                                                "do_sample": workload.temperature > 0})
    else:
        body["ignore_eos"] = True
    return json.dumps(body).encode()


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]
