"""Regenerate gpu_worker/builtin/: a tiny Llama (GQA) with a byte-level BPE tokenizer and a ChatML template.

    python scripts/make_builtin_model.py                      # tokenizer + configs + random weights
    python scripts/make_builtin_model.py --train-minutes 15   # ... then train on CPU for 15 minutes

The training text is what every Python install carries offline: the docstrings and comments of the standard library
plus the language reference in pydoc_data/topics.py, read from sorted file lists. The tokenizer and random weights
are reproducible for a given Python version; time-bounded training is not bit-reproducible (it stops on the clock).
This is a dev tool: it may use transformers, the gpu_worker package may not.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' thread pool: stay polite on shared machines
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import ast
import io
import json
import math
import sysconfig
import time
import tokenize as pytokenize
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT_DIR = Path(__file__).resolve().parent.parent / "gpu_worker" / "builtin"
BOS, EOS, IM_START, IM_END = "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, IM_START, IM_END]  # ids 0..3
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int = 8000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 688
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5


# ----------------------------------------------------------------------------- corpus


def _docstrings_and_comments(source: str) -> list[str]:
    pieces: list[str] = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return pieces
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                pieces.append(doc)
    comment_lines: list[str] = []
    try:
        for tok in pytokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == pytokenize.COMMENT and not tok.string.startswith("#!"):
                comment_lines.append(tok.string.lstrip("#").strip())
            elif comment_lines and tok.type not in (pytokenize.NL, pytokenize.NEWLINE):
                block = " ".join(line for line in comment_lines if line)
                if len(block) > 40:
                    pieces.append(block)
                comment_lines = []
    except (pytokenize.TokenError, SyntaxError, IndentationError):
        pass
    return pieces


def collect_corpus() -> list[str]:
    """Documents of English prose, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    topics = stdlib / "pydoc_data" / "topics.py"
    if topics.exists():
        namespace: dict = {}
        exec(compile(topics.read_text(encoding="utf-8"), str(topics), "exec"), namespace)
        docs.extend(namespace["topics"][key] for key in sorted(namespace["topics"]))
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIPPED_DIRS.intersection(rel.parts) or rel.parts[0] == "pydoc_data":
            continue
        try:
            docs.extend(_docstrings_and_comments(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return docs


# ----------------------------------------------------------------------------- tokenizer and configs


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS}:1 $B:1",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return tok


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_configs(out: Path, tok: Tokenizer, shape: ModelShape) -> None:
    bos, eos, im_end = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(IM_END)
    write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "head_dim": shape.hidden_size // shape.num_attention_heads,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        **{k: v for k, v in shape.__dict__.items()},
    })
    write_json(out / "generation_config.json", {"bos_token_id": bos, "eos_token_id": [eos, im_end]})
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": True}
        for t in SPECIAL_TOKENS
    }
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_position_embeddings,
        "chat_template": CHATML_TEMPLATE,
    })
    tok.save(str(out / "tokenizer.json"))


# ----------------------------------------------------------------------------- weights


def param_shapes(s: ModelShape) -> dict[str, tuple[int, ...]]:
    head_dim = s.hidden_size // s.num_attention_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab_size, s.hidden_size)}
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (s.hidden_size,)
        shapes[p + "post_attention_layernorm.weight"] = (s.hidden_size,)
        shapes[p + "self_attn.q_proj.weight"] = (s.num_attention_heads * head_dim, s.hidden_size)
        shapes[p + "self_attn.k_proj.weight"] = (s.num_key_value_heads * head_dim, s.hidden_size)
        shapes[p + "self_attn.v_proj.weight"] = (s.num_key_value_heads * head_dim, s.hidden_size)
        shapes[p + "self_attn.o_proj.weight"] = (s.hidden_size, s.num_attention_heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (s.intermediate_size, s.hidden_size)
        shapes[p + "mlp.up_proj.weight"] = (s.intermediate_size, s.hidden_size)
        shapes[p + "mlp.down_proj.weight"] = (s.hidden_size, s.intermediate_size)
    shapes["model.norm.weight"] = (s.hidden_size,)
    shapes["lm_head.weight"] = (s.vocab_size, s.hidden_size)
    return shapes


def random_weights(shape: ModelShape, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, dims in param_shapes(shape).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(dims)
        else:
            weights[name] = torch.randn(dims, generator=gen) * 0.02
    return weights


def save_weights(out: Path, weights: dict[str, torch.Tensor]) -> None:
    bf16 = {name: t.detach().to(torch.bfloat16).contiguous() for name, t in sorted(weights.items())}
    save_file(bf16, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)


# ----------------------------------------------------------------------------- optional training


def train(out: Path, docs: list[str], minutes: float, seed: int, seq_len: int, batch: int, lr: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids: list[int] = []
    for enc in tok.encode_batch(docs):  # each document starts with BOS (the post-processor)
        ids.extend(enc.ids)
        ids.append(tok.token_to_id(EOS))
    data = torch.tensor(ids, dtype=torch.long)
    print(f"training tokens: {len(data):,}")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    model.load_state_dict({k: v.float() for k, v in load_file(str(out / "model.safetensors")).items()})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    budget, start, step = minutes * 60.0, time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < budget:
        frac = elapsed / budget
        for group in opt.param_groups:  # warmup, then cosine on the clock
            group["lr"] = lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"step {step} t={elapsed:.0f}s loss {loss.item():.3f}", flush=True)
        step += 1
    save_weights(out, dict(model.state_dict()))
    model.eval()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    for prompt in ["The", "Return the", "This module"]:
        enc = hf_tok(prompt, return_tensors="pt")
        sample = model.generate(**enc, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8)
        print(repr(hf_tok.decode(sample[0], skip_special_tokens=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-minutes", type=float, default=0.0, help="0: ship random weights")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--skip-tokenizer", action="store_true", help="keep the existing tokenizer and configs")
    args = parser.parse_args()
    shape = ModelShape()
    args.out.mkdir(parents=True, exist_ok=True)
    docs = collect_corpus()
    print(f"corpus: {len(docs):,} documents, {sum(map(len, docs)):,} characters")
    if not args.skip_tokenizer:
        tok = train_tokenizer(docs, shape.vocab_size)
        assert tok.get_vocab_size() == shape.vocab_size, tok.get_vocab_size()
        write_configs(args.out, tok, shape)
        save_weights(args.out, random_weights(shape, args.seed))
    if args.train_minutes > 0:
        train(args.out, docs, args.train_minutes, args.seed, args.seq_len, args.batch, args.lr)


if __name__ == "__main__":
    main()
