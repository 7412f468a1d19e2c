"""Render a model's own jinja2 chat template the way transformers' apply_chat_template(tokenize=False) does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class NoChatTemplateError(ValueError):
    """The model ships no chat template, so chat messages cannot be turned into a prompt."""


class ChatTemplateError(ValueError):
    """The chat template failed to compile or raised while rendering (e.g. through raise_exception)."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering passes it through."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # jinja's own tojson escapes HTML characters; chat templates expect plain json.dumps
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled template plus the special-token strings it may refer to (bos_token, eos_token, ...)."""

    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    compiled: jinja2.Template = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.source:
            raise NoChatTemplateError("the model has no chat template")
        object.__setattr__(self, "compiled", _compile(self.source))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any) -> str:
        for message in messages:
            if not isinstance(message, dict):
                raise ChatTemplateError(f"chat messages must be dicts, got {type(message).__name__}")
        variables = {**self.special_tokens, "tools": None, "documents": None, **extra}
        try:
            return self.compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as exc:  # includes raise_exception("...") from the template itself
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc
        except Exception as exc:  # the template is the model's code: any failure is a bad-request, not a crash
            raise ChatTemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from exc


def pick_template(config_value: Any) -> str | None:
    """tokenizer_config's chat_template is a string, or a list of {"name", "template"} of which "default" is used."""
    if isinstance(config_value, str):
        return config_value
    if isinstance(config_value, list):
        named = {item.get("name"): item.get("template") for item in config_value if isinstance(item, dict)}
        return named.get("default")
    return None
