"""Length-bucketed batching and collation."""

from __future__ import annotations

import random

import pytest
import torch

from nlpseq.batching import TokenStore, bucket_batches, pad


def lengths(n: int = 500, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def padding(batches: list[list[int]], lens: list[int]) -> int:
    """Padded positions in total: what bucketing is meant to keep small."""
    return sum(max(lens[i] for i in b) * len(b) - sum(lens[i] for i in b) for b in batches)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, batch_size, pool", [(500, 16, 5), (37, 8, 50), (1, 4, 1), (0, 4, 2)])
def test_every_index_exactly_once(n, batch_size, pool, shuffle):
    lens = lengths(n)
    batches = bucket_batches(lens, batch_size, shuffle=shuffle, seed=3, pool=pool)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # Only the last batch of each pool may be short.
    assert sum(len(b) < batch_size for b in batches) <= max(1, -(-n // (pool * batch_size)))


def test_padding_is_small():
    lens = lengths()
    bucketed = bucket_batches(lens, 16, seed=0, pool=10)
    rng = random.Random(0)
    order = list(range(len(lens)))
    rng.shuffle(order)
    unsorted = [order[i : i + 16] for i in range(0, len(order), 16)]
    assert padding(bucketed, lens) * 5 < padding(unsorted, lens)
    # Within a pool the batches are contiguous in sorted length: each batch spans a narrow range.
    spans = [max(lens[i] for i in b) - min(lens[i] for i in b) for b in bucketed]
    assert sum(spans) / len(spans) < 10


def test_batches_sorted_within_pools():
    lens = lengths(320)
    batches = bucket_batches(lens, 8, seed=1, pool=40)  # one pool: all 320 sorted together
    ranges = sorted((min(lens[i] for i in b), max(lens[i] for i in b)) for b in batches)
    for (_, high), (low, _) in zip(ranges, ranges[1:]):
        assert high <= low


def test_deterministic_with_seed_and_shuffled_across_seeds():
    lens = lengths()
    assert bucket_batches(lens, 16, seed=5) == bucket_batches(lens, 16, seed=5)
    assert bucket_batches(lens, 16, seed=5) != bucket_batches(lens, 16, seed=6)


def test_no_shuffle_is_longest_first():
    lens = [3, 9, 1, 9, 5]
    assert bucket_batches(lens, 2, shuffle=False) == [[1, 3], [4, 0], [2]]


def test_bad_batch_size():
    with pytest.raises(ValueError):
        bucket_batches([1, 2], 0)


def test_pad():
    ids, lens = pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lens.tolist() == [3, 1, 2]
    assert ids.dtype == torch.long


def test_collate_shapes_and_mask():
    batch = TokenStore([[4, 5, 6], [7], []]).collate([0, 1, 2], torch.tensor([1, 0, 1]))
    assert batch.ids.shape == (3, 3) and batch.ids.dtype == torch.long
    assert batch.lengths.tolist() == [3, 1, 1]  # an empty text becomes one pad token
    assert batch.mask.tolist() == [[True, True, True], [True, False, False],
                                   [True, False, False]]
    assert batch.mask.dtype == torch.bool
    assert batch.labels.tolist() == [1, 0, 1]
    assert batch.num_tokens == 5
    assert (batch.ids[~batch.mask] == 0).all()
    moved = batch.to("cpu")
    assert type(moved) is type(batch) and torch.equal(moved.ids, batch.ids)
    assert TokenStore([[1, 2]]).collate([0]).labels is None


def test_token_store_collates_the_chosen_examples_padded():
    rng = random.Random(0)
    sequences = [[rng.randint(4, 50) for _ in range(rng.randint(0, 9))] for _ in range(40)]
    labels = torch.tensor([rng.randint(0, 2) for _ in sequences])
    store = TokenStore(sequences)
    assert len(store) == 40
    for batch in bucket_batches([len(s) for s in sequences], 7, seed=2):
        got = store.collate(batch, labels)
        ids, lengths = pad([sequences[i] or [0] for i in batch], 0)
        # an empty text becomes one pad token with length 1, as the models need
        mask = [[j < max(len(sequences[i]), 1) for j in range(ids.size(1))] for i in batch]
        assert torch.equal(got.ids, ids) and torch.equal(got.lengths, lengths)
        assert got.mask.tolist() == mask
        assert torch.equal(got.labels, labels[batch])
    empty = TokenStore([[], []]).collate([0, 1])
    assert empty.ids.tolist() == [[0], [0]] and empty.lengths.tolist() == [1, 1]
