"""LinearChainCRF against brute-force enumeration of all tag paths."""

import itertools

import pytest
import torch

from nlpseq.models.crf import LinearChainCRF
from nlpseq.tagschemes import allowed_transitions, scheme_tags

LENGTHS = [1, 2, 4, 3]  # several lengths in one masked batch


def make_crf(num_tags: int, constrained: bool, seed: int = 0) -> LinearChainCRF:
    torch.manual_seed(seed)
    if constrained:
        start, trans, end = (
            torch.rand(num_tags) > 0.3,
            torch.rand(num_tags, num_tags) > 0.4,
            (torch.rand(num_tags) > 0.3),
        )
        start[0] = trans[:, 0] = trans[0, :] = end[0] = True  # keep at least one path per length
        crf = LinearChainCRF(num_tags, start, trans, end)
    else:
        crf = LinearChainCRF(num_tags)
    with torch.no_grad():
        crf.start_scores.normal_()
        crf.trans_scores.normal_()
        crf.end_scores.normal_()
    return crf


def batch(num_tags: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    emissions = torch.randn(len(LENGTHS), max(LENGTHS), num_tags)  # (B, T, K)
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]  # (B, T)
    return emissions, mask


def allowed_paths(crf: LinearChainCRF, length: int):
    for path in itertools.product(range(crf.num_tags), repeat=length):
        ok = bool(crf.start_allowed[path[0]]) and bool(crf.end_allowed[path[-1]])
        ok = ok and all(bool(crf.trans_allowed[a, b]) for a, b in itertools.pairwise(path))
        if ok:
            yield path


def path_score(crf: LinearChainCRF, emissions: torch.Tensor, path) -> float:
    """Hand-written score of one path on emissions (T, K), constraints ignored."""
    total = crf.start_scores[path[0]] + crf.end_scores[path[-1]]
    total = total + sum(emissions[t, y] for t, y in enumerate(path))
    total = total + sum(crf.trans_scores[a, b] for a, b in itertools.pairwise(path))
    return total.item()


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: scores far apart, as after training
def test_log_partition_and_viterbi_match_brute_force(constrained, scale):
    num_tags = 3
    crf = make_crf(num_tags, constrained)
    emissions, mask = batch(num_tags)
    emissions = emissions * scale
    log_z = crf.log_partition(emissions, mask)
    paths = crf.viterbi(emissions, mask)
    padded, best_scores = crf.viterbi_tensor(emissions, mask)
    for b, length in enumerate(LENGTHS):
        scored = {p: path_score(crf, emissions[b], p) for p in allowed_paths(crf, length)}
        expected = torch.logsumexp(torch.tensor(list(scored.values()), dtype=torch.float64), 0)
        assert log_z[b].item() == pytest.approx(expected.item(), abs=1e-4 * scale)
        best = max(scored, key=scored.get)
        assert paths[b] == list(best)
        assert best_scores[b].item() == pytest.approx(scored[best], abs=1e-4 * scale)
        assert padded[b, :length].tolist() == list(best)
        # score() agrees with the hand-written path score for every path
        tags = torch.zeros(1, max(LENGTHS), dtype=torch.long)
        tags[0, :length] = torch.tensor(best)
        got = crf.score(emissions[b : b + 1], tags, mask[b : b + 1])
        assert got.item() == pytest.approx(scored[best], abs=1e-4 * scale)


def test_nll_is_normalised_and_differentiable():
    num_tags = 3
    crf = make_crf(num_tags, constrained=True)
    emissions, mask = batch(num_tags)
    emissions.requires_grad_(True)
    # probabilities of all allowed paths of a length-3 sequence sum to one
    b = LENGTHS.index(3)
    total = 0.0
    for path in allowed_paths(crf, 3):
        tags = torch.zeros(1, max(LENGTHS), dtype=torch.long)
        tags[0, :3] = torch.tensor(path)
        total += torch.exp(-crf.nll(emissions[b : b + 1], tags, mask[b : b + 1])).item()
    assert total == pytest.approx(1.0, abs=1e-4)
    tags = torch.full((len(LENGTHS), max(LENGTHS)), -100)  # padding value must be ignored
    for i, length in enumerate(LENGTHS):
        tags[i, :length] = 0
    loss = crf.nll(emissions, tags, mask).sum()
    loss.backward()
    assert torch.isfinite(emissions.grad).all()
    assert emissions.grad[~mask].abs().max() == 0  # padding gets no gradient
    # forbidden transitions are not learned
    assert crf.trans_scores.grad[~crf.trans_allowed].abs().max() == 0


@pytest.mark.parametrize("scheme, expected", [
    ("IOB2", ["B-PER", "I-PER"]), ("BIOES", ["B-PER", "E-PER"])])
def test_constraints_forbid_o_to_inside(scheme, expected):
    tags = scheme_tags(["PER", "LOC"], scheme)
    # Emissions (scores all zero otherwise): O 5, B-PER 3 then I-PER 5, E-PER 4, O 1.
    # Unconstrained, O I-PER (10) wins. IOB2 forbids it: B-PER I-PER (8) beats O O (6).
    # BIOES also forbids ending on I-: B-PER E-PER (7) beats O O (6).
    emissions = torch.full((1, 2, len(tags)), -5.0)
    emissions[0, 0, tags.index("O")] = 5.0
    emissions[0, 0, tags.index("B-PER")] = 3.0
    emissions[0, 1, tags.index("I-PER")] = 5.0
    emissions[0, 1, tags.index("O")] = 1.0
    if scheme == "BIOES":
        emissions[0, 1, tags.index("E-PER")] = 4.0
    mask = torch.ones(1, 2, dtype=torch.bool)
    free = LinearChainCRF(len(tags))
    assert [tags[i] for i in free.viterbi(emissions, mask)[0]] == ["O", "I-PER"]
    crf = LinearChainCRF(len(tags), *allowed_transitions(tags, scheme))
    assert [tags[i] for i in crf.viterbi(emissions, mask)[0]] == expected


def test_bad_mask_shape():
    with pytest.raises(ValueError):
        LinearChainCRF(3, trans_allowed=torch.ones(2, 2, dtype=torch.bool))
