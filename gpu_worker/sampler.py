"""Batched sampling: per-row temperature, top-k, top-p, penalties, min_tokens, seeds and logprobs.

Penalties see only the output tokens (the runner is not given the prompt): presence and frequency penalties follow
OpenAI (subtract on output-token counts), repetition_penalty follows vLLM/HF (divide positive logits, multiply negative
ones) but, unlike them, on output tokens only.

Sampling inverts the CDF: one uniform draw per row, found in the row's cumulative probabilities (the exponential race
drew one number per vocabulary entry, and that draw was 45% of a batch-64 step on CPU). Seeded rows draw from their
own per-sequence generator, so a seed gives the same tokens whatever else is in the batch; unseeded rows share one
batched draw. Logprobs come from log_softmax of the raw model logits, as vLLM does by default.
The device is synchronised once per step, by the final .tolist().
"""

from __future__ import annotations

import torch

from gpu_worker.batch import SampledToken, ScheduledChunk
from protocol.messages import SamplingParams

# Temperatures below this are greedy, as in vLLM: logits / 3e-45 overflow to inf and the softmax to NaN, which sampled
# a token id past the vocabulary (found by tests/test_fuzz_sampling.py).
GREEDY_BELOW = 1e-5
# torch's CPU argmax walks a row one element at a time (538 us for 65 rows of 8000 logits, 1 thread), where amax is
# vectorised (27 us). Maxima of chunks of this many logits, then argmax over the chunk maxima and within the winning
# chunk, give the same first index in 85 us (32000 logits: 340 against 2225 us). One row is faster the plain way.
ARGMAX_CHUNK = 64


class Sampler:
    def __init__(self, device: torch.device):
        self.device = device
        self._generators: dict[int, torch.Generator] = {}

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    def sample(self, logits: torch.Tensor, chunks: list[ScheduledChunk]) -> list[SampledToken]:
        """logits [S, vocab] float32, one row per sampling chunk (in order) -> one SampledToken per row."""
        params = [_params(c) for c in chunks]
        want_logprobs = [p.logprobs is not None for p in params]
        raw_logprobs = None
        if any(want_logprobs):
            rows = [i for i, w in enumerate(want_logprobs) if w]
            raw_logprobs = torch.log_softmax(logits[self._index(rows)], dim=-1)  # [R, vocab]
        logits = self._apply_penalties(logits, chunks, params)
        logits = self._mask_min_tokens(logits, chunks, params)
        if all(p.temperature < GREEDY_BELOW for p in params):
            token_ids = row_argmax(logits)  # [S]
        else:
            token_ids = self._draw(logits, chunks, params)
        if raw_logprobs is None:
            return [SampledToken(token_id=t) for t in token_ids.tolist()]
        return self._with_logprobs(token_ids, raw_logprobs, params, want_logprobs)

    # ------------------------------------------------------------------ logit processing

    def _apply_penalties(self, logits: torch.Tensor, chunks: list[ScheduledChunk],
                         params: list[SamplingParams]) -> torch.Tensor:
        rows = [i for i, p in enumerate(params) if _has_penalty(p) and chunks[i].output_token_ids]
        if not rows:
            return logits
        vocab = logits.shape[1]
        width = max(len(chunks[i].output_token_ids) for i in rows)
        padded = [list(chunks[i].output_token_ids) + [vocab] * (width - len(chunks[i].output_token_ids)) for i in rows]
        ids = torch.tensor(padded, dtype=torch.int64).to(self.device, non_blocking=True)  # [R, width]
        counts = torch.zeros(len(rows), vocab + 1, device=self.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
        counts = counts[:, :vocab]  # [R, vocab]; the padding column dropped
        seen = counts > 0
        index = self._index(rows)
        rep, freq, pres = (self._column([getattr(params[i], name) for i in rows])
                           for name in ("repetition_penalty", "frequency_penalty", "presence_penalty"))
        sub = logits[index]  # [R, vocab]
        penalised = torch.where(sub > 0, sub / rep, sub * rep)
        sub = torch.where(seen, penalised, sub) - freq * counts - pres * seen.float()
        logits = logits.clone()
        logits[index] = sub
        return logits

    def _mask_min_tokens(self, logits: torch.Tensor, chunks: list[ScheduledChunk],
                         params: list[SamplingParams]) -> torch.Tensor:
        rows: list[int] = []
        banned: list[int] = []
        for i, (chunk, p) in enumerate(zip(chunks, params)):
            if len(chunk.output_token_ids) >= p.min_tokens:
                continue
            stops = set(p.stop_token_ids) | (set() if p.ignore_eos else set(chunk.eos_token_ids))
            rows += [i] * len(stops)
            banned += sorted(stops)
        if not rows:
            return logits
        logits = logits.clone()
        logits[self._index(rows), self._index(banned)] = float("-inf")
        return logits

    # ------------------------------------------------------------------ drawing

    def _draw(self, logits: torch.Tensor, chunks: list[ScheduledChunk], params: list[SamplingParams]) -> torch.Tensor:
        temperature = self._column([p.temperature if p.temperature >= GREEDY_BELOW else 1.0 for p in params])  # [S,1]
        scaled = logits / temperature
        if any(p.top_k is not None or p.top_p < 1.0 for p in params):
            scaled = self._top_k_top_p(scaled, params)
        probs = torch.softmax(scaled, dim=-1)  # [S, vocab]
        uniform = torch.empty(len(params), 1, device=self.device)  # [S, 1]
        unseeded = [i for i, p in enumerate(params) if p.seed is None]
        if unseeded:
            uniform[self._index(unseeded)] = torch.rand(len(unseeded), 1, device=self.device)
        for i, (chunk, p) in enumerate(zip(chunks, params)):
            if p.seed is not None:
                uniform[i] = torch.rand(1, device=self.device, generator=self._generator(chunk, p.seed))
        cdf = probs.cumsum(dim=-1)  # [S, vocab]
        total = cdf[:, -1:]  # [S, 1], 1 up to rounding
        # Kept strictly below the total, the draw always lands where the CDF rises: on a token of probability > 0.
        target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        sampled = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [S]
        if not any(p.temperature < GREEDY_BELOW for p in params):
            return sampled
        greedy = self._column([p.temperature < GREEDY_BELOW for p in params], torch.bool).squeeze(1)  # [S]
        return torch.where(greedy, row_argmax(logits), sampled)

    def _top_k_top_p(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        vocab = logits.shape[1]
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [S, vocab] each
        ranks = torch.arange(vocab, device=self.device)
        top_k = self._column([min(p.top_k, vocab) if p.top_k else vocab for p in params], torch.int64)  # [S, 1]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k, float("-inf"))
        top_p = self._column([p.top_p if p.top_p < 1.0 else 2.0 for p in params])  # [S, 1]; 2.0: keep all
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass ranked above each token
        sorted_logits = sorted_logits.masked_fill((before >= top_p) & (ranks > 0), float("-inf"))
        return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)

    def _generator(self, chunk: ScheduledChunk, seed: int) -> torch.Generator:
        generator = self._generators.get(chunk.seq_id)
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed((seed + chunk.seed_offset) % 2**63)
            self._generators[chunk.seq_id] = generator
        return generator

    # ------------------------------------------------------------------ results

    def _with_logprobs(self, token_ids: torch.Tensor, raw_logprobs: torch.Tensor, params: list[SamplingParams],
                       want: list[bool]) -> list[SampledToken]:
        """Pack ids, chosen logprobs and top-k into one float64 tensor so a single .tolist() syncs the device."""
        rows = [i for i, w in enumerate(want) if w]
        top_n = max(params[i].logprobs or 0 for i in rows)
        chosen = raw_logprobs.gather(1, token_ids[self._index(rows)].unsqueeze(1))  # [R, 1]
        top_values, top_ids = raw_logprobs.topk(top_n, dim=-1)  # [R, top_n] each
        packed = torch.cat([chosen, top_values, top_ids.float()], dim=1).double()  # [R, 1 + 2 * top_n]
        flat = torch.cat([token_ids.double(), packed.flatten()]).tolist()
        count = len(want)
        out = [SampledToken(token_id=int(t)) for t in flat[:count]]
        width = 1 + 2 * top_n
        for r, i in enumerate(rows):
            row = flat[count + r * width: count + (r + 1) * width]
            n = params[i].logprobs or 0
            top = [(int(row[1 + top_n + j]), row[1 + j]) for j in range(n)]
            out[i] = SampledToken(token_id=out[i].token_id, logprob=row[0], top=top)
        return out

    def _index(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)

    def _column(self, values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True).unsqueeze(1)  # [S, 1]


def row_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits [S, vocab] -> [S] int64: each row's first index of its maximum, as torch.argmax(dim=-1)."""
    rows, vocab = logits.shape
    if logits.device.type != "cpu" or rows == 1 or vocab < 2 * ARGMAX_CHUNK:
        return logits.argmax(dim=-1)
    padded = -(-vocab // ARGMAX_CHUNK) * ARGMAX_CHUNK
    if padded != vocab:
        logits = torch.nn.functional.pad(logits, (0, padded - vocab), value=float("-inf"))
    chunks = logits.contiguous().view(rows, padded // ARGMAX_CHUNK, ARGMAX_CHUNK)  # [S, chunks, ARGMAX_CHUNK]
    best_chunk = chunks.amax(dim=-1).argmax(dim=-1)  # [S]; the first chunk holding the row's maximum
    within = chunks[torch.arange(rows, device=logits.device), best_chunk].argmax(dim=-1)  # [S]
    return best_chunk * ARGMAX_CHUNK + within


def _params(chunk: ScheduledChunk) -> SamplingParams:
    if chunk.sampling is None:
        raise ValueError(f"sequence {chunk.seq_id}: a sampling chunk needs its SamplingParams")
    return chunk.sampling


def _has_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
