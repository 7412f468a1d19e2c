"""Request bodies of /v1/completions and /v1/chat/completions -> a validated ParsedRequest.

Strict: every field is type- and range-checked, unknown fields are rejected, and fields of OpenAI's API that the
engine cannot honour (echo, suffix, logit_bias, tools, ...) are rejected unless they hold their neutral value.
Extensions in vLLM's spelling: top_k, min_tokens, repetition_penalty, ignore_eos, stop_token_ids,
skip_special_tokens, include_stop_str_in_output, add_special_tokens; and the router's own `timeout` and
`first_token_timeout` (seconds, per request, at most the server's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.messages import ChatMessage, SamplingParams
from router.config import RequestLimits
from router.errors import ApiError, invalid
from router.fields import Fields, int_list, reject_unless

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ModelInfo:
    """What the router learned from the workers' handshakes."""

    name: str
    context_length: int
    has_chat_template: bool


@dataclass(frozen=True)
class ParsedRequest:
    chat: bool
    model: str
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    first_token_timeout: float | None = None
    request_timeout: float | None = None


def parse_completion(body: Any, model: ModelInfo, limits: RequestLimits) -> ParsedRequest:
    f = Fields(body)
    name = _model(f, model)
    prompt, prompt_token_ids = _prompt(f, limits)
    _check_text_length(len(prompt or ""), model, limits, "prompt")
    reject_unless(not f.boolean("echo", False), "'echo' is not supported", "echo")
    reject_unless(f.string("suffix") is None, "'suffix' is not supported", "suffix")
    sampling = _sampling(f, model, limits, default_max_tokens=16, logprobs=_completion_logprobs(f, limits))
    best_of = f.integer("best_of", None)
    reject_unless(best_of is None or best_of == sampling.n, "'best_of' must equal 'n' if given", "best_of")
    return ParsedRequest(
        chat=False, model=name, sampling=sampling, prompt=prompt, prompt_token_ids=prompt_token_ids,
        add_special_tokens=f.boolean("add_special_tokens", True), **_common(f),
    )


def parse_chat(body: Any, model: ModelInfo, limits: RequestLimits) -> ParsedRequest:
    f = Fields(body)
    name = _model(f, model)
    messages = _messages(f, limits)
    _check_text_length(sum(len(m.content) for m in messages), model, limits, "messages")
    if not model.has_chat_template:
        raise invalid(f"model {model.name!r} has no chat template; use /v1/completions", param="messages",
                      code="no_chat_template")
    max_tokens_field = "max_tokens"
    if f.has("max_completion_tokens"):
        reject_unless(not f.has("max_tokens"), "give one of 'max_tokens' and 'max_completion_tokens'", "max_tokens")
        max_tokens_field = "max_completion_tokens"
    f.ignore("max_tokens", "max_completion_tokens")
    sampling = _sampling(f, model, limits, default_max_tokens=None, logprobs=_chat_logprobs(f, limits),
                         max_tokens_field=max_tokens_field)
    tools = f.array("tools")
    reject_unless(not tools, "'tools' are not supported", "tools")
    tool_choice = f.raw("tool_choice")
    reject_unless(tool_choice in (None, "none", "auto"), "'tool_choice' is not supported", "tool_choice")
    f.boolean("parallel_tool_calls", True)
    response_format = f.obj("response_format")
    if response_format is not None:
        reject_unless(response_format.string("type", required=True) == "text",
                      "only response_format {'type': 'text'} is supported", "response_format")
    return ParsedRequest(
        chat=True, model=name, sampling=sampling, messages=messages,
        add_special_tokens=f.boolean("add_special_tokens", False), **_common(f),
    )


def _model(f: Fields, model: ModelInfo) -> str:
    name = f.string("model", required=True)
    if name != model.name:
        raise ApiError(404, f"the model {name!r} does not exist; this server serves {model.name!r}",
                       param="model", code="model_not_found")
    return name


def _prompt(f: Fields, limits: RequestLimits) -> tuple[str | None, list[int] | None]:
    prompt = f.raw("prompt")
    if prompt is None:
        raise invalid("'prompt' is required", param="prompt", code="missing_field")
    if type(prompt) is list and len(prompt) == 1 and type(prompt[0]) in (str, list):
        prompt = prompt[0]  # a batch of one
    if type(prompt) is str:
        if not prompt:
            raise invalid("'prompt' must not be empty", param="prompt")
        return prompt, None
    if type(prompt) is list and prompt and all(type(p) in (str, list) for p in prompt):
        raise invalid("batched prompts are not supported; send one request per prompt", param="prompt",
                      code="unsupported")
    if type(prompt) is not list or not prompt:
        raise invalid("'prompt' must be a non-empty string or array of token ids", param="prompt")
    return None, int_list(prompt, "prompt", max_items=limits.max_prompt_token_ids)


def _check_text_length(chars: int, model: ModelInfo, limits: RequestLimits, param: str) -> None:
    cap = model.context_length * limits.max_prompt_chars_per_token
    if chars > cap:
        raise invalid(f"the {param} has {chars} characters, more than can fit in the context of "
                      f"{model.context_length} tokens (at most {cap} characters)", param=param,
                      code="context_length_exceeded")


def _messages(f: Fields, limits: RequestLimits) -> list[ChatMessage]:
    messages = f.array("messages")
    if not messages:
        raise invalid("'messages' must be a non-empty array", param="messages", code="missing_field")
    if len(messages) > limits.max_messages:
        raise invalid(f"at most {limits.max_messages} messages are allowed", param="messages")
    parsed = []
    for i, raw in enumerate(messages):
        m = Fields(raw, f"messages[{i}]")
        role = m.string("role", required=True)
        if role not in CHAT_ROLES:
            raise invalid(f"'{m.param('role')}' must be one of {', '.join(CHAT_ROLES)}, got {role!r}",
                          param=m.param("role"))
        m.string("name")
        parsed.append(ChatMessage(CHAT_ROLES[role], _content(m)))
        m.finish()
    return parsed


def _content(m: Fields) -> str:
    content = m.raw("content")
    if type(content) is str:
        return content
    if type(content) is not list:
        raise invalid(f"'{m.param('content')}' must be a string or an array of text parts", param=m.param("content"))
    texts = []
    for j, raw in enumerate(content):
        part = Fields(raw, f"{m.param('content')}[{j}]")
        reject_unless(part.string("type", required=True) == "text", "only text content parts are supported",
                      part.param("type"))
        texts.append(part.string("text", required=True))
        part.finish()
    return "".join(texts)


def _completion_logprobs(f: Fields, limits: RequestLimits) -> int | None:
    return f.integer("logprobs", None, 0, limits.max_logprobs)


def _chat_logprobs(f: Fields, limits: RequestLimits) -> int | None:
    wanted = f.boolean("logprobs", False)
    top = f.integer("top_logprobs", None, 0, limits.max_logprobs)
    if top is not None and not wanted:
        raise invalid("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def _sampling(f: Fields, model: ModelInfo, limits: RequestLimits, *, default_max_tokens: int | None,
              logprobs: int | None, max_tokens_field: str = "max_tokens") -> SamplingParams:
    context = model.context_length
    # Chat without max_tokens runs until the context is full (max_tokens None on the wire), as OpenAI and vLLM do.
    max_tokens = f.integer(max_tokens_field, default_max_tokens, 1, context)
    min_tokens = f.integer("min_tokens", 0, 0, context if max_tokens is None else max_tokens)
    top_k = f.integer("top_k", None, -1, 1 << 20)
    seed = f.integer("seed", None, -(2**63), 2**63 - 1)
    logit_bias = f.obj("logit_bias")
    reject_unless(logit_bias is None or not logit_bias.body, "'logit_bias' is not supported", "logit_bias")
    f.string("user")
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        temperature=f.number("temperature", 1.0, 0.0, 2.0),
        top_p=f.number("top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=None if top_k in (None, -1, 0) else top_k,
        presence_penalty=f.number("presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=f.number("frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=f.number("repetition_penalty", 1.0, 0.0, 10.0, lo_open=True),
        seed=seed,
        n=f.integer("n", 1, 1, limits.max_n),
        stop=_stop(f, limits),
        stop_token_ids=int_list(f.raw("stop_token_ids") or [], "stop_token_ids", max_items=limits.max_stop_token_ids),
        ignore_eos=f.boolean("ignore_eos", False),
        logprobs=logprobs,
        skip_special_tokens=f.boolean("skip_special_tokens", True),
        include_stop_str_in_output=f.boolean("include_stop_str_in_output", False),
    )


def _stop(f: Fields, limits: RequestLimits) -> list[str]:
    stop = f.raw("stop")
    if stop is None:
        return []
    stops = [stop] if type(stop) is str else stop
    if type(stops) is not list or not all(type(s) is str for s in stops):
        raise invalid("'stop' must be a string or an array of strings", param="stop", code="invalid_type")
    if len(stops) > limits.max_stop_sequences:
        raise invalid(f"at most {limits.max_stop_sequences} stop sequences are allowed", param="stop")
    if any(not s or len(s) > limits.max_stop_chars for s in stops):
        raise invalid(f"stop sequences must be 1 to {limits.max_stop_chars} characters", param="stop")
    return stops


def _common(f: Fields) -> dict[str, Any]:
    stream = f.boolean("stream", False)
    options = f.obj("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("'stream_options' is only allowed with 'stream': true", param="stream_options")
        include_usage = options.boolean("include_usage", False)
        options.finish()
    common = {
        "stream": stream,
        "include_usage": include_usage,
        "first_token_timeout": _timeout(f, "first_token_timeout"),
        "request_timeout": _timeout(f, "timeout"),
    }
    f.finish()
    return common


def _timeout(f: Fields, name: str) -> float | None:
    if not f.has(name):
        f.ignore(name)
        return None
    return f.number(name, 0.0, 0.0, None, lo_open=True)
