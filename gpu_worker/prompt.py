"""Turn a GenerateRequest's prompt (text, token ids or chat messages) into token ids, or a per-request error."""

from __future__ import annotations

from protocol.messages import GenerateRequest


class PromptError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def prompt_token_ids(tokenizer, req: GenerateRequest) -> list[int]:
    given = [v is not None for v in (req.prompt, req.prompt_token_ids, req.messages)]
    if sum(given) != 1:
        raise PromptError("invalid_prompt", "give exactly one of prompt, prompt_token_ids and messages")
    if req.messages is not None:
        if not tokenizer.has_chat_template:
            raise PromptError("chat_template_missing", "this model has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        try:
            return tokenizer.encode_chat(messages)
        except Exception as exc:  # a model's template can raise anything; it must not take the worker down
            raise PromptError("chat_template_error", f"the chat template failed: {exc}") from None
    if req.prompt_token_ids is not None:
        vocab = tokenizer.vocab_size
        bad = next((t for t in req.prompt_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise PromptError("invalid_prompt", f"token id {bad} is outside the vocabulary [0, {vocab})")
        return list(req.prompt_token_ids)
    return tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
