"""Samplers: PK identity batches for training, disjoint shards for evaluation, both aware of DDP ranks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    """Yields dataset indices in runs of ``num_identities`` x ``num_instances`` (P identities x K images).

    Wrap it in ``torch.utils.data.BatchSampler(sampler, P * K, drop_last=True)``: every batch then holds P
    different identities with K images each. Lightning calls :meth:`set_epoch` on ``batch_sampler.sampler`` at
    every epoch start (also after a resume), which is why the PK logic lives in a ``Sampler`` and not in a
    custom batch sampler, on which Lightning calls nothing.

    An epoch is built like this, from ``seed`` and the epoch number only:

    1. The identities are shuffled with a generator shared by all ranks and dealt out to the ranks
       (``rank::world_size``), so the ranks hold disjoint identities for the whole epoch.
    2. On each rank, each identity's images are shuffled and cut into chunks of K; an identity with fewer than
       K images gives one chunk drawn with replacement, the remainder of a larger one is left for a later epoch.
    3. Each batch takes one chunk from each of P identities drawn at random among those with chunks left; an
       identity that runs out is re-chunked with a fresh shuffle, so every rank can make the same number of
       batches, ``len(self) // (P * K)``, which is fixed by the data (total chunks // (P * world_size)).

    Args:
        pids: person id (any integers) of each dataset item, in dataset order.
        num_identities: P, identities per batch and rank.
        num_instances: K, images per identity.
        seed: base seed; the same on every rank.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_identities: int = 16,
        num_instances: int = 4,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_identities < 1 or num_instances < 1:
            raise ValueError(f"PKSampler: P and K must be >= 1, got P={num_identities}, K={num_instances}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: rank {rank} is not in [0, world_size={world_size})")
        indices_by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            indices_by_pid[int(pid)].append(index)
        self._indices = [np.asarray(indices_by_pid[pid]) for pid in sorted(indices_by_pid)]
        if len(self._indices) < num_identities * world_size:
            raise ValueError(
                f"PKSampler: {len(self._indices)} identities cannot fill batches of P={num_identities} "
                f"identities on each of {world_size} rank(s); lower P (num_identities)"
            )
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        total_chunks = sum(max(1, len(idx) // num_instances) for idx in self._indices)
        self.num_batches = max(1, total_chunks // (num_identities * world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.num_identities * self.num_instances

    def __iter__(self) -> Iterator[int]:
        shared = np.random.default_rng([self.seed, self.epoch])
        identities = shared.permutation(len(self._indices))[self.rank :: self.world_size]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        chunks: dict[int, list[np.ndarray]] = {int(i): [] for i in identities}
        for _ in range(self.num_batches):
            with_chunks = [i for i, left in chunks.items() if left]
            if len(with_chunks) < self.num_identities:
                for identity, left in chunks.items():
                    if not left:
                        left.extend(self._chunk(self._indices[identity], rng))
                with_chunks = list(chunks)
            for pick in rng.choice(len(with_chunks), self.num_identities, replace=False):
                yield from chunks[with_chunks[pick]].pop().tolist()

    def _chunk(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        k = self.num_instances
        if len(indices) < k:
            return [rng.choice(indices, k, replace=True)]
        shuffled = rng.permutation(indices)
        return [shuffled[i : i + k] for i in range(0, len(shuffled) - k + 1, k)]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...``: every item on exactly one rank, no padding duplicates.

    ``DistributedSampler`` pads the last shard with repeated items, which would count some queries twice in
    re-ID metrics; the metric gathers shards of unequal length instead.
    """

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: rank {rank} is not in [0, world_size={world_size})")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))
