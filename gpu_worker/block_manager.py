"""Paged KV cache bookkeeping: a pool of fixed-size blocks, a block table per sequence, and a prefix cache.

A full block is identified by a hash chain over its tokens and every token before it. When a sequence frees a full
block, the block keeps its hash and goes to the back of the free queue: a later prompt with the same prefix can take
it back (a cache hit) until the block is reused for something else (evicted, oldest first).
"""

from __future__ import annotations

from collections import OrderedDict

from gpu_worker.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        self._block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # hash -> block id
        # Blocks with no reference, oldest first. Ordered so a cache hit can take one out of the middle.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.prefix_hit_tokens = 0  # counted by the scheduler, once a hit is actually admitted

    # ------------------------------------------------------------------ queries

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """How many more blocks `seq` needs for its cache to hold `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    # ------------------------------------------------------------------ allocation

    def take_cached_prefix(self, seq: Sequence) -> int:
        """Give a new sequence the cached blocks of its longest cached prefix; returns how many tokens that covers.

        The last prompt token is always recomputed, so that the step that finishes the prompt has logits to sample.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        bs = self.block_size
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            chained = hash((seq.prefix_hash, tokens))
            block = self._cached.get(chained)
            if block is None or self._block_tokens[block] != tokens:
                break
            self._ref(block)
            seq.block_table.append(block)
            seq.prefix_hash = chained
            seq.num_hashed_blocks += 1
        return len(seq.block_table) * bs

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq`'s block table to hold `num_tokens` tokens. False, with nothing changed, if blocks run out."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self._free):
            return False
        for _ in range(needed):
            block, _ = self._free.popitem(last=False)
            self._forget_hash(block)
            self._ref_counts[block] = 1
            seq.block_table.append(block)
        return True

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the blocks that computed tokens have filled since the last call, so later prompts can share them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while seq.num_hashed_blocks < seq.num_computed_tokens // bs:
            i = seq.num_hashed_blocks
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            chained = hash((seq.prefix_hash, tokens))
            block = seq.block_table[i]
            if self._block_hash[block] is None and chained not in self._cached:
                self._block_hash[block] = chained
                self._block_tokens[block] = tokens
                self._cached[chained] = block
            seq.prefix_hash = chained
            seq.num_hashed_blocks += 1

    def free(self, seq: Sequence) -> None:
        """Release every block of `seq`. Tail blocks go first, so shared prefixes are evicted last."""
        for block in reversed(seq.block_table):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free[block] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0
        seq.prefix_hash = None

    # ------------------------------------------------------------------ internals

    def _ref(self, block: int) -> None:
        if self._ref_counts[block] == 0:
            del self._free[block]
        self._ref_counts[block] += 1

    def _forget_hash(self, block: int) -> None:
        h = self._block_hash[block]
        if h is not None:
            if self._cached.get(h) == block:
                del self._cached[h]
            self._block_hash[block] = None
            self._block_tokens[block] = None
