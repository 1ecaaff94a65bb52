"""Which examples go into which batch, in what order, for training and for inference.

Training draws seeded permutations with a position (`BatchOrder`), so a resumed run sees the
batches the uninterrupted one would; inference orders inputs by length (`batches_by_length`),
so each batch pads little. Both sort by token length; the fast path splits a single batch
further into groups of similar length (`families.fastpath.length_groups`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cuetune.prompt.encoder import Encoded


def batches_by_length(items: list[Encoded], batch_size: int) -> Iterator[tuple[list[int], list[Encoded]]]:
    """Yield (indices, batch items) in length order, so each batch pads little."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, [items[i] for i in idx]


class BatchOrder:
    """Seeded shuffling with a position: epoch e is permutation(seed + e), read in slices, so a
    resumed run continues with exactly the batches the uninterrupted run would have seen.

    With `lengths`, each window of 8 batches is sorted by length before it is cut into batches,
    and the full batches are then shuffled: batches pad little, and their order stays random.
    """

    WINDOW = 8

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, index: int = 0,
                 lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.lengths = lengths
        self.epoch, self.index = epoch, index
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=gen).tolist()
        if self.lengths is None:
            return perm
        size, window = self.batch_size, self.batch_size * self.WINDOW
        batches = []
        for w in range(0, self.n, window):
            chunk = sorted(perm[w:w + window], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        tail = [i for b in batches if len(b) < size for i in b]  # the last, short batch stays last
        return [i for k in torch.randperm(len(full), generator=gen).tolist() for i in full[k]] + tail

    def next(self) -> list[int]:
        if self.index >= self.n:
            self.epoch, self.index = self.epoch + 1, 0
            self._perm = self._permutation()
        chunk = self._perm[self.index:self.index + self.batch_size]
        self.index += len(chunk)
        return chunk

    @property
    def position(self) -> list[int]:
        return [self.epoch, self.index]
