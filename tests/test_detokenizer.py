"""IncrementalDetokenizer: streamed deltas rebuild the full decode exactly; stop strings cut it where they should."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_worker.detokenizer import IncrementalDetokenizer
from gpu_worker.tokenizer import Tokenizer
from tests.test_tokenizer import BUILTIN, build_llama_style_tokenizer

TEXTS = ["Hello, world!", " naïve café", "日本語のテキスト", "🎉🚀👩‍👩‍👧", "中文 and English", "\n\n  x", "ÿ€"]
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def builtin() -> Tokenizer:
    return Tokenizer.from_dir(BUILTIN)


@pytest.fixture(scope="module", params=["builtin", "llama_style"])
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, builtin) -> Tokenizer:
    if request.param == "builtin":
        return builtin
    return Tokenizer.from_dir(build_llama_style_tokenizer(tmp_path_factory.mktemp("llama_style")))


@pytest.fixture(scope="module")
def id_sequences(tokenizer: Tokenizer) -> st.SearchStrategy[list[int]]:
    runs = st.lists(token_runs(tokenizer), max_size=8)
    return runs.map(lambda runs: [i for run in runs for i in run])


def token_runs(tok: Tokenizer) -> st.SearchStrategy[list[int]]:
    """Runs of ids: any id, special tokens, partial UTF-8 byte tokens, and real encodings of emoji/CJK text."""
    special = [tok.backend.token_to_id(t) for t in tok.special_tokens.values()]
    partial_bytes = sorted(
        i for text in TEXTS for i in tok.encode(text, add_special_tokens=False) if "\ufffd" in tok.token_text(i)
    )
    assert partial_bytes, "the fixtures must exercise tokens that are incomplete UTF-8"
    return st.one_of(
        st.lists(st.integers(0, tok.vocab_size - 1), min_size=1, max_size=4),
        st.lists(st.sampled_from(special), min_size=1, max_size=2),
        st.lists(st.sampled_from(partial_bytes), min_size=1, max_size=4),
        st.sampled_from(TEXTS).map(lambda text: tok.encode(text, add_special_tokens=False)),
    )


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk_sizes: list[int]) -> list[str]:
    """Push `ids` in chunks (sizes cycle through chunk_sizes); return every delta, finish() last."""
    deltas, at, k = [], 0, 0
    while at < len(ids):
        size = chunk_sizes[k % len(chunk_sizes)]
        deltas.append(detok.push(ids[at : at + size]).text)
        at, k = at + size, k + 1
    deltas.append(detok.finish())
    return deltas


def reference_stop(full: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """The text up to the stop string that is completed first (ties: the longer one)."""
    hits = [(full.find(s) + len(s), full.find(s), s) for s in stops if s and s in full]
    if not hits:
        return full, None
    end, start, stop = min(hits, key=lambda hit: (hit[0], hit[1]))
    return full[: end if include else start], stop


@HYPOTHESIS
@given(data=st.data(), skip=st.booleans(), chunk_sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_deltas_rebuild_the_full_decode(
    tokenizer: Tokenizer, id_sequences, data, skip: bool, chunk_sizes: list[int]
) -> None:
    ids = data.draw(id_sequences)
    deltas = stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=skip), ids, chunk_sizes)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)


@HYPOTHESIS
@given(data=st.data(), include=st.booleans(), chunk_sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_stop_strings_match_a_search_of_the_full_text(
    tokenizer: Tokenizer, id_sequences, data, include: bool, chunk_sizes: list[int]
) -> None:
    ids = data.draw(id_sequences)
    full = tokenizer.decode(ids)
    substring = st.tuples(st.integers(0, len(full)), st.integers(1, 6)).map(lambda p: full[p[0] : p[0] + p[1]])
    stops = data.draw(st.lists(st.one_of(substring, st.sampled_from(["🎉", "語の", "o, w", "zzz"])), max_size=3))
    detok = IncrementalDetokenizer(tokenizer, stop=stops, include_stop_str_in_output=include)
    deltas = stream(detok, ids, chunk_sizes)
    expected_text, expected_stop = reference_stop(full, stops, include)
    assert "".join(deltas) == expected_text
    assert detok.stopped == expected_stop


def push_texts(tok: Tokenizer, detok: IncrementalDetokenizer, pieces: list[str]) -> list[tuple[str, str | None]]:
    """Push the tokens of each piece of text as one step; return each step's (text, stop)."""
    updates = [detok.push(tok.encode(piece, add_special_tokens=False)) for piece in pieces]
    return [(update.text, update.stop) for update in updates]


def test_stop_string_across_tokens_is_cut_before_it(builtin: Tokenizer) -> None:
    detok = IncrementalDetokenizer(builtin, stop=["o wo"])
    steps = push_texts(builtin, detok, ["Hel", "lo w", "orld", " again"])
    assert "".join(text for text, _ in steps) == "Hell"
    assert steps[2][1] == "o wo" and detok.stopped == "o wo"
    assert steps[3] == ("", None)  # nothing after the stop
    assert detok.finish() == ""


def test_include_stop_str_in_output(builtin: Tokenizer) -> None:
    detok = IncrementalDetokenizer(builtin, stop=["END"], include_stop_str_in_output=True)
    steps = push_texts(builtin, detok, ["one E", "N", "D two"])
    assert steps[0] == ("one E", None)  # nothing is held back when the stop string is sent anyway
    assert "".join(text for text, _ in steps) == "one END"
    assert steps[2][1] == "END"


def test_possible_stop_prefix_is_held_then_released(builtin: Tokenizer) -> None:
    detok = IncrementalDetokenizer(builtin, stop=["STOP"])
    steps = push_texts(builtin, detok, ["abc S", "T", "ART", " more"])
    # The last len("STOP") - 1 characters wait each time: "c S", then " ST", then "ART", then "ore".
    assert steps == [("ab", None), ("c", None), (" ST", None), ("ART m", None)]
    assert detok.finish() == "ore"
    assert detok.stopped is None


def test_multibyte_stop_string_split_inside_a_character(builtin: Tokenizer) -> None:
    ids = builtin.encode("ok 🎉 no", add_special_tokens=False)
    assert sum("\ufffd" in builtin.token_text(i) for i in ids) >= 2  # the emoji spans byte tokens
    detok = IncrementalDetokenizer(builtin, stop=["🎉"])
    deltas = [detok.push([i]).text for i in ids]
    assert "".join(deltas) == "ok " and detok.stopped == "🎉"


def test_special_tokens_kept_or_skipped(builtin: Tokenizer) -> None:
    ids = builtin.encode("<|im_start|>hi<|im_end|>", add_special_tokens=False)
    for skip, expected in [(True, "hi"), (False, "<|im_start|>hi<|im_end|>")]:
        detok = IncrementalDetokenizer(builtin, skip_special_tokens=skip)
        assert "".join(detok.push([i]).text for i in ids) + detok.finish() == expected


def test_unfinished_character_is_flushed_by_finish(builtin: Tokenizer) -> None:
    ids = builtin.encode("x🎉", add_special_tokens=False)[:-1]  # the emoji's last byte never comes
    detok = IncrementalDetokenizer(builtin)
    streamed = "".join(detok.push([i]).text for i in ids)
    assert streamed == "x"
    assert streamed + detok.finish() == builtin.decode(ids)
