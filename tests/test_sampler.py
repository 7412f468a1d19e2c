"""The batched sampler: greedy, top-k/top-p, seeds, min_tokens, penalties and logprobs."""

from __future__ import annotations

import pytest
import torch

from gpu_worker.batch import ScheduledChunk
from gpu_worker.sampler import Sampler, row_argmax
from protocol.messages import SamplingParams

VOCAB = 50
EOS = 7


def chunk(seq_id: int, output: tuple[int, ...] = (), **params) -> ScheduledChunk:
    return ScheduledChunk(seq_id, [1], 3, [0], True, SamplingParams(**params), output_token_ids=output,
                          eos_token_ids=(EOS,))


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(1)) * 3  # [rows, vocab]


def sample(logits: torch.Tensor, chunks: list[ScheduledChunk], sampler: Sampler | None = None) -> list[int]:
    sampler = sampler or Sampler(torch.device("cpu"))
    return [t.token_id for t in sampler.sample(logits.clone(), chunks)]


def test_greedy_is_argmax_and_top_k_1_is_greedy(logits):
    expected = logits.argmax(dim=-1).tolist()
    assert sample(logits, [chunk(i, temperature=0.0) for i in range(6)]) == expected
    assert sample(logits, [chunk(i, temperature=1.0, top_k=1) for i in range(6)]) == expected
    mixed = [chunk(i, temperature=0.0) if i % 2 else chunk(i, temperature=1.5, top_k=1) for i in range(6)]
    assert sample(logits, mixed) == expected


def test_a_seed_gives_the_same_tokens_alone_or_in_any_batch(logits):
    def run(batch_of: list[int], steps: int = 5) -> list[int]:
        sampler = Sampler(torch.device("cpu"))
        drawn = []
        for step in range(steps):
            chunks = [chunk(i, temperature=1.0, seed=(1234 if i == 3 else None if i % 2 else i)) for i in batch_of]
            rows = logits[batch_of] + step  # the same row logits whatever the batch
            drawn.append(sample(rows, chunks, sampler)[batch_of.index(3)])
        return drawn

    alone = run([3])
    assert run([0, 1, 2, 3, 4, 5]) == alone
    assert run([5, 3, 1]) == alone
    flat = torch.zeros(1, VOCAB)  # uniform, so different seeds visibly disagree
    other = [sample(flat, [chunk(0, temperature=1.0, seed=s)])[0] for s in range(8)]
    assert len(set(other)) > 1


def test_seed_offset_and_release():
    flat = torch.zeros(1, VOCAB)
    sampler = Sampler(torch.device("cpu"))
    first = [sample(flat, [chunk(9, temperature=1.0, seed=5)], sampler)[0] for _ in range(6)]
    sampler.release(9)
    again = [sample(flat, [chunk(9, temperature=1.0, seed=5)], sampler)[0] for _ in range(6)]
    assert again == first  # the generator started over after release
    offset = ScheduledChunk(2, [1], 0, [0], True, SamplingParams(temperature=1.0, seed=5), seed_offset=1)
    assert [sample(flat, [offset], sampler)[0] for _ in range(6)] != first


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS], logits[0, 11], logits[0, 12] = 10.0, 9.0, 8.0
    assert sample(logits, [chunk(0, (4,), temperature=0.0, min_tokens=2, stop_token_ids=[11])]) == [12]
    assert sample(logits, [chunk(0, (4, 4), temperature=0.0, min_tokens=2, stop_token_ids=[11])]) == [EOS]
    assert sample(logits, [chunk(0, (4,), temperature=1.0, top_k=2, min_tokens=2)]) in ([11], [12])
    # ignore_eos: EOS does not end the sequence, so min_tokens has no reason to hide it.
    assert sample(logits, [chunk(0, (4,), temperature=0.0, min_tokens=2, ignore_eos=True)]) == [EOS]


def test_penalties_count_output_tokens():
    logits = torch.full((1, VOCAB), -5.0)
    logits[0, 3], logits[0, 4] = 2.0, 1.5
    out = (3, 3, 9)
    assert sample(logits, [chunk(0, out, temperature=0.0)]) == [3]
    assert sample(logits, [chunk(0, out, temperature=0.0, frequency_penalty=0.3)]) == [4]  # 2 - 2 * 0.3 < 1.5
    assert sample(logits, [chunk(0, out, temperature=0.0, presence_penalty=0.3)]) == [3]  # 2 - 0.3 > 1.5
    assert sample(logits, [chunk(0, out, temperature=0.0, presence_penalty=0.6)]) == [4]
    assert sample(logits, [chunk(0, out, temperature=0.0, repetition_penalty=1.5)]) == [4]  # 2 / 1.5 < 1.5
    negative = logits - 10.0  # -8 and -8.5: the penalty multiplies negative logits
    assert sample(negative, [chunk(0, out, temperature=0.0, repetition_penalty=1.1)]) == [4]
    assert sample(negative, [chunk(0, (), temperature=0.0, repetition_penalty=1.1)]) == [3]
    # Rows without penalties in the same batch are untouched.
    both = [chunk(0, out, temperature=0.0, frequency_penalty=0.3), chunk(1, out, temperature=0.0)]
    assert sample(logits.repeat(2, 1), both) == [4, 3]


def test_penalties_shift_the_sampled_distribution():
    torch.manual_seed(0)
    logits = torch.zeros(4000, VOCAB)
    chunks = [chunk(i, (0, 0, 0), temperature=1.0, frequency_penalty=1.0) for i in range(4000)]
    drawn = torch.tensor(sample(logits, chunks))
    # token 0's weight is e^-3 of the others': about 1 in 1000 draws instead of 1 in 50.
    assert (drawn == 0).float().mean() < 0.005


def test_logprobs_come_from_the_raw_logits(logits):
    chunks = [chunk(0, (2,), temperature=0.7, logprobs=3, repetition_penalty=1.3, seed=3),
              chunk(1, temperature=0.0),
              chunk(2, temperature=0.0, logprobs=0)]
    tokens = Sampler(torch.device("cpu")).sample(logits[:3].clone(), chunks)
    raw = torch.log_softmax(logits[:3], dim=-1)
    assert tokens[1].logprob is None and tokens[1].top is None
    assert tokens[2].token_id == int(logits[2].argmax()) and tokens[2].top == []
    for row in (0, 2):
        assert tokens[row].logprob == pytest.approx(float(raw[row, tokens[row].token_id]), abs=1e-6)
    values, ids = raw[0].topk(3)
    assert [t for t, _ in tokens[0].top] == ids.tolist()
    assert [lp for _, lp in tokens[0].top] == pytest.approx(values.tolist(), abs=1e-6)


def test_top_p_keeps_the_nucleus_and_temperature_follows_softmax():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    drawn = torch.tensor(sample(logits, [chunk(i, temperature=1.0, top_p=0.8) for i in range(4000)]))
    assert set(drawn.tolist()) == {0, 1}
    assert (drawn == 0).float().mean() == pytest.approx(0.5 / 0.8, abs=0.03)
    drawn = torch.tensor(sample(logits, [chunk(i, temperature=0.5) for i in range(4000)]))
    expected = torch.softmax(probs.log() / 0.5, dim=-1)
    frequencies = torch.bincount(drawn, minlength=4).float() / 4000
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)
    top2 = torch.tensor(sample(logits, [chunk(i, temperature=1.0, top_k=2) for i in range(4000)]))
    assert set(top2.tolist()) == {0, 1}


@pytest.mark.parametrize("vocab", [8000, 50257, 200])
def test_row_argmax_gives_torch_argmax_first_index(vocab):
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(9, vocab, generator=generator)  # [rows, vocab]
    logits[1, :] = float("-inf")  # no finite logit: index 0
    logits[2, 5] = logits[2, vocab - 3] = 100.0  # a tie across chunks: the first
    logits[3, 70] = logits[3, 71] = 100.0  # a tie within a chunk
    logits[4, vocab - 1] = 100.0  # in the padded last chunk
    logits[5, 130] = float("nan")  # torch.argmax takes a NaN as the maximum
    logits[6] = torch.round(logits[6])  # many ties
    assert row_argmax(logits).tolist() == logits.argmax(dim=-1).tolist()
    assert row_argmax(logits[4:5]).tolist() == [vocab - 1]
