from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import BatchSampler

from icg.data.sampler import PKSampler, ShardSampler

P, K = 4, 3
# 13 identities: sizes 1..13 images, so several have fewer than K images
PIDS = [pid for pid in range(13) for _ in range(pid + 1)]


def _batches(rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 7) -> list[list[int]]:
    sampler = PKSampler(PIDS, P, K, seed=seed, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch)
    return list(BatchSampler(sampler, P * K, drop_last=True))


@pytest.mark.parametrize("world_size", [1, 2])
def test_every_batch_has_p_identities_with_k_images(world_size: int) -> None:
    for epoch in range(4):
        for rank in range(world_size):
            for batch in _batches(rank, world_size, epoch):
                counts = Counter(PIDS[i] for i in batch)
                assert len(counts) == P and set(counts.values()) == {K}
                for pid in counts:  # an identity repeats an image only when it has fewer than K
                    images = [i for i in batch if PIDS[i] == pid]
                    if PIDS.count(pid) >= K:
                        assert len(set(images)) == K


def test_two_ranks_hold_disjoint_identities_and_equal_batch_counts() -> None:
    for epoch in range(5):
        per_rank = [_batches(rank, 2, epoch) for rank in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]) > 0
        pids = [{PIDS[i] for batch in batches for i in batch} for batches in per_rank]
        assert not pids[0] & pids[1]


def test_batch_count_matches_len_and_chunk_arithmetic() -> None:
    chunks = sum(max(1, (pid + 1) // K) for pid in range(13))
    for world_size in (1, 2):
        sampler = PKSampler(PIDS, P, K, rank=0, world_size=world_size)
        assert len(sampler) == chunks // (P * world_size) * P * K
        assert len(_batches(0, world_size)) == chunks // (P * world_size)


def test_same_seed_same_order_new_order_each_epoch() -> None:
    assert _batches(epoch=3) == _batches(epoch=3)
    assert _batches(epoch=0) != _batches(epoch=1)
    assert _batches(seed=1) != _batches(seed=2)


def test_all_images_are_seen_over_epochs() -> None:
    seen = {i for epoch in range(30) for batch in _batches(epoch=epoch) for i in batch}
    assert seen == set(range(len(PIDS)))


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="13 identities cannot fill"):
        PKSampler(PIDS, num_identities=7, num_instances=2, world_size=2)


@pytest.mark.parametrize("num_items", [0, 1, 10, 11])
def test_shards_cover_every_item_once(num_items: int) -> None:
    shards = [list(ShardSampler(num_items, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_items))
    assert [len(ShardSampler(num_items, rank=r, world_size=3)) for r in range(3)] == [len(s) for s in shards]
    assert np.ptp([len(s) for s in shards]) <= 1
