"""gpu_worker.tokenizer against transformers' AutoTokenizer, on the built-in model and on a Llama-style tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from gpu_worker.chat_template import ChatTemplateError, NoChatTemplateError
from gpu_worker.tokenizer import Tokenizer, TokenizerLoadError

transformers = pytest.importorskip("transformers")

BUILTIN = Path(__file__).resolve().parent.parent / "gpu_worker" / "builtin"

SAMPLES = [
    "",
    "Hello world",
    "  leading and trailing spaces  ",
    "Return the value of the named attribute of object.",
    "naïve café, Grüße aus Köln",
    "日本語のテキスト、中文文本",
    "emoji 🎉🚀👩‍👩‍👧 and flags 🇯🇵",
    "tabs\tand\nnewlines\r\n\n",
    "code: def f(x):\n    return x ** 2  # square",
    "<|im_start|>user\nhi<|im_end|>",
    "<s>literal</s> markers",
]

# A Llama-2 style template: it reads bos_token/eos_token and rejects a bad conversation with raise_exception.
LLAMA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
    "{% else %}{% set sys = none %}{% set msgs = messages %}{% endif %}"
    "{% for message in msgs %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (('<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n') if loop.first and sys else '') "
    "+ message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if tools %}{{ tools | tojson }}{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Zähle bis 3 🎉"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "  and 日本? "},
    ],
]


def build_llama_style_tokenizer(model_dir: Path, chat_template: str | None = LLAMA_TEMPLATE) -> Path:
    """A SentencePiece-like BPE: Metaspace pre-tokenizer, byte fallback, <s> added by a TemplateProcessing."""
    model_dir.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    corpus = [sample for sample in SAMPLES if "<" not in sample] * 20 + ["the quick brown fox jumps over it"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tok.save(str(model_dir / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "clean_up_tokenization_spaces": False}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return model_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama_style_tokenizer(tmp_path_factory.mktemp("llama_style"))


@pytest.fixture(scope="module", params=["builtin", "llama_style"])
def model_dir(request: pytest.FixtureRequest, llama_dir: Path) -> Path:
    return BUILTIN if request.param == "builtin" else llama_dir


@pytest.fixture(scope="module")
def pair(model_dir: Path) -> tuple[Tokenizer, object]:
    return Tokenizer.from_dir(model_dir), transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_transformers(pair, text: str) -> None:
    ours, reference = pair
    assert ours.encode(text) == reference(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == reference(text, add_special_tokens=False)["input_ids"]


def test_prompts_start_with_bos(pair) -> None:
    ours, _ = pair
    assert ours.bos_token_id is not None
    assert ours.encode("hello")[0] == ours.bos_token_id
    assert ours.bos_token_id not in ours.encode("hello", add_special_tokens=False)


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_transformers(pair, skip: bool) -> None:
    ours, reference = pair
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_matches_transformers(pair, conversation, add_generation_prompt: bool) -> None:
    ours, reference = pair
    expected = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.render_chat(conversation, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_encode_chat_matches_transformers(pair, conversation) -> None:
    ours, reference = pair
    expected = reference.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    if not isinstance(expected, list):  # transformers 5 returns a BatchEncoding
        expected = expected["input_ids"]
    assert ours.encode_chat(conversation) == expected
    assert ours.encode_chat(conversation)[0] == ours.bos_token_id  # from the template, not added twice
    assert ours.encode_chat(conversation)[1] != ours.bos_token_id


def test_builtin_special_tokens_and_template() -> None:
    tok = Tokenizer.from_dir(BUILTIN)
    assert tok.vocab_size == 8000
    assert tok.has_chat_template
    end_of_text, im_end = tok.backend.token_to_id("<|end_of_text|>"), tok.backend.token_to_id("<|im_end|>")
    assert set(tok.eos_token_ids) == {end_of_text, im_end}
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == (
        "<|begin_of_text|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_token_text() -> None:
    tok = Tokenizer.from_dir(BUILTIN)
    hello = tok.encode(" hello", add_special_tokens=False)
    assert "".join(tok.token_text(i) for i in hello) == " hello"
    assert tok.token_text(tok.backend.token_to_id("<|im_end|>")) == "<|im_end|>"
    partial = tok.encode("🎉", add_special_tokens=False)
    assert len(partial) > 1 and tok.token_text(partial[0]) == "\ufffd"
    assert tok.token_text(tok.vocab_size + 5) == ""


def test_missing_template_is_a_clear_error(tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(build_llama_style_tokenizer(tmp_path, chat_template=None))
    assert not tok.has_chat_template
    with pytest.raises(NoChatTemplateError, match="no chat template"):
        tok.render_chat([{"role": "user", "content": "hi"}])
    with pytest.raises(NoChatTemplateError):
        tok.encode_chat([{"role": "user", "content": "hi"}])


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    model_dir = build_llama_style_tokenizer(tmp_path)
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}", encoding="utf-8"
    )
    tok = Tokenizer.from_dir(model_dir)
    assert tok.render_chat([{"role": "user", "content": "x"}]) == "<user>x"


def test_template_exception_message_is_kept(llama_dir: Path) -> None:
    tok = Tokenizer.from_dir(llama_dir)
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tok.render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_template_sandbox_blocks_attribute_escape(tmp_path: Path) -> None:
    model_dir = build_llama_style_tokenizer(tmp_path, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        Tokenizer.from_dir(model_dir).render_chat([{"role": "user", "content": "x"}])


def test_missing_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_eos_ids_come_from_all_config_files(tmp_path: Path) -> None:
    model_dir = build_llama_style_tokenizer(tmp_path)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}), encoding="utf-8")
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": 9}), encoding="utf-8")
    assert Tokenizer.from_dir(model_dir).eos_token_ids == (2, 7, 9)


def test_the_word_cache_stays_small():
    import random

    from gpu_worker.config import BUILTIN_MODEL_DIR

    def rss_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    tokenizer = Tokenizer.from_dir(BUILTIN_MODEL_DIR)
    rng = random.Random(0)
    prompts = [f"soak {rng.random()}" for _ in range(20000)]  # a new word each, as the soak sends
    tokenizer.encode(prompts[0])
    before = rss_mb()
    for prompt in prompts:
        tokenizer.encode(prompt)
    assert rss_mb() - before < 2.0  # tokenizers' default 10,000-word cache grew by 4.7 MB here
