"""Retrieval metrics: hand-computed cases, scikit-learn AP, a sort-based reference, chunking."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pfcvr.engine.ranking import (cmc_curve, feature_similarity_rows, rank_statistics,
                                  rank_statistics_chunked, retrieval_metrics)
from pfcvr.metrics import METRIC_NAMES, MetricsError, RankStats


def _ranked_row(positive_ranks, n_gallery):
    """One query whose positives (id 1) sit at the given 1-based ranks; others are id 2."""
    scores = np.linspace(1.0, 0.0, n_gallery)          # gallery item k has rank k+1
    ids = np.full(n_gallery, 2)
    ids[np.asarray(positive_ranks) - 1] = 1
    return scores[None, :], np.array([1]), ids


def _sort_reference(sim, qids, gids, ks=(1, 5, 10)):
    """IRRA-style: argsort the whole gallery per query, then CMC / AP / INP from the match matrix."""
    order = np.argsort(-sim, axis=1, kind="stable")
    match = (gids[order] == qids[:, None]).astype(np.float64)
    cum = np.cumsum(match, axis=1)
    ranks = np.arange(1, sim.shape[1] + 1)
    ap = (match * cum / ranks).sum(1) / match.sum(1)
    last = sim.shape[1] - np.argmax(match[:, ::-1], axis=1)
    inp = match.sum(1) / last
    out = {f"R{k}": 100 * float(np.mean(cum[:, k - 1] > 0)) for k in ks}
    out.update(mAP=100 * float(ap.mean()), mINP=100 * float(inp.mean()))
    return out


def test_perfect_ranking_is_100_everywhere():
    gids = np.repeat(np.arange(5), 3)
    qids = np.repeat(np.arange(5), 2)
    sim = (qids[:, None] == gids[None, :]).astype(np.float32) + 0.01 * np.random.rand(10, 15)
    m = retrieval_metrics(sim, qids, gids)
    assert m == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}


@pytest.mark.parametrize("r", [1, 2, 3, 7, 12])
def test_single_positive_at_rank_r(r):
    sim, q, g = _ranked_row([r], 20)
    m = retrieval_metrics(sim, q, g)
    assert m["mAP"] == pytest.approx(100.0 / r)
    assert m["mINP"] == pytest.approx(100.0 / r)
    assert m["R1"] == (100.0 if r <= 1 else 0.0)
    assert m["R5"] == (100.0 if r <= 5 else 0.0)
    assert m["R10"] == (100.0 if r <= 10 else 0.0)


def test_positives_at_ranks_1_and_4():
    sim, q, g = _ranked_row([1, 4], 10)
    m = retrieval_metrics(sim, q, g)
    assert m["mAP"] == pytest.approx(75.0)       # (1/1 + 2/4) / 2
    assert m["mINP"] == pytest.approx(50.0)      # 2 / 4
    assert m["R1"] == 100.0


def test_mean_over_queries_and_cmc():
    # query 0: its only positive (gallery 2) ranked 3rd; query 1: ranked 1st.
    gids = np.array([2, 2, 1, 2, 2, 2])
    sim = np.array([[0.9, 0.8, 0.7, 0.1, 0.2, 0.3],
                    [0.0, 0.1, 0.9, 0.2, 0.3, 0.4]])
    qids = np.array([1, 1])
    m = retrieval_metrics(sim, qids, gids, ks=(1, 2, 3))
    assert m["R1"] == 50.0 and m["R2"] == 50.0 and m["R3"] == 100.0
    assert m["mAP"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    np.testing.assert_allclose(cmc_curve(sim, qids, gids, max_rank=4), [50, 50, 100, 100])


def test_ties_are_pessimistic():
    # A collapsed model (all scores equal) must not look perfect: negatives tied with a positive
    # rank before it; tied positives take consecutive ranks.
    sim = np.zeros((1, 5))
    m = retrieval_metrics(sim, [1], [1, 2, 2, 1, 2])
    assert m["R1"] == 0.0
    assert m["mAP"] == pytest.approx(100 * (1 / 4 + 2 / 5) / 2)
    assert m["mINP"] == pytest.approx(100 * 2 / 5)
    # Two tied positives at the top: ranks 1 and 2, AP 1.
    m = retrieval_metrics(np.array([[1.0, 1.0, 0.0]]), [1], [1, 1, 2])
    assert m["mAP"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_sklearn_on_random_matrices(seed):
    rng = np.random.default_rng(seed)
    gids = rng.integers(0, 12, size=60)
    qids = rng.choice(gids, size=40)
    sim = rng.standard_normal((40, 60))
    stats = rank_statistics(sim, qids, gids)
    expected = [average_precision_score(gids == q, s) for q, s in zip(qids, sim)]
    np.testing.assert_allclose(stats.ap, expected, rtol=1e-12)
    m = retrieval_metrics(sim, qids, gids)
    assert m["mAP"] == pytest.approx(100 * np.mean(expected))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sort_reference(seed):
    rng = np.random.default_rng(seed)
    gids = rng.integers(0, 30, size=300)
    qids = rng.choice(gids, size=250)
    sim = rng.standard_normal((250, 300)).astype(np.float32)
    ref = _sort_reference(sim, qids, gids)
    got = retrieval_metrics(sim, qids, gids)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("chunk", [1, 7, 64, 249, 250, 10_000])
def test_chunked_equals_unchunked(chunk):
    rng = np.random.default_rng(3)
    gids = rng.integers(0, 25, size=200)
    qids = rng.choice(gids, size=250)
    sim = torch.from_numpy(rng.standard_normal((250, 200)).astype(np.float32))
    whole = rank_statistics(sim, qids, gids, chunk_size=len(qids))
    part = rank_statistics(sim, qids, gids, chunk_size=chunk)
    np.testing.assert_array_equal(part.first_rank, whole.first_rank)
    np.testing.assert_array_equal(part.ap, whole.ap)
    np.testing.assert_array_equal(part.inp, whole.inp)
    assert retrieval_metrics(sim, qids, gids, chunk_size=chunk) == \
        retrieval_metrics(sim.numpy(), qids, gids, chunk_size=None)


def test_feature_rows_equal_full_matrix():
    rng = np.random.default_rng(4)
    q = torch.nn.functional.normalize(torch.randn(90, 16), dim=1)
    g = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    gids = np.arange(50) % 10
    qids = rng.integers(0, 10, size=90)
    full = retrieval_metrics(q @ g.t(), qids, gids)
    rows = rank_statistics_chunked(feature_similarity_rows(q, g), 90, 50, qids, gids, chunk_size=16)
    assert rows.metrics() == pytest.approx(full)


def test_string_ids_and_half_precision():
    sim = torch.tensor([[0.2, 0.9, 0.1], [0.8, 0.1, 0.3]], dtype=torch.float16)
    m = retrieval_metrics(sim, ["b", "a"], ["a", "b", "b"], ks=(1,))
    assert m["R1"] == 100.0
    assert m["mAP"] == pytest.approx(100 * (0.5 * (1 / 1 + 2 / 3) + 1.0) / 2)


def test_queries_without_positive_are_counted_in_the_error():
    sim = np.random.rand(4, 3)
    with pytest.raises(MetricsError, match=r"2 of 4 queries have no relevant gallery item"):
        retrieval_metrics(sim, [1, 7, 2, 9], [1, 2, 3])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(MetricsError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), [1], [1, 2])
    with pytest.raises(MetricsError, match="3 query ids"):
        retrieval_metrics(np.random.rand(2, 2), [1, 2, 1], [1, 2])
    with pytest.raises(MetricsError, match="2-D"):
        retrieval_metrics(np.random.rand(4), [1], [1])
    with pytest.raises(MetricsError, match="chunk_size"):
        retrieval_metrics(np.random.rand(2, 2), [1, 2], [1, 2], chunk_size=0)
    with pytest.raises(MetricsError, match="torch tensor or a numpy array"):
        retrieval_metrics([[0.1, 0.2]], [1], [1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_input_gives_the_cpu_result():
    rng = np.random.default_rng(5)
    gids = rng.integers(0, 40, size=500)
    qids = rng.choice(gids, size=700)
    sim = torch.from_numpy(rng.standard_normal((700, 500)).astype(np.float32))
    cpu = rank_statistics(sim, qids, gids, chunk_size=128)
    gpu = rank_statistics(sim.cuda(), torch.from_numpy(qids).cuda(), gids, chunk_size=128)
    np.testing.assert_array_equal(gpu.first_rank, cpu.first_rank)
    np.testing.assert_allclose(gpu.ap, cpu.ap, rtol=1e-12)
    np.testing.assert_allclose(gpu.inp, cpu.inp, rtol=1e-12)


def test_many_positives_take_the_searchsorted_path():
    # 40 positives per query (> COMPARE_MAX_POSITIVES): same numbers as the sort reference.
    from pfcvr.engine import ranking as metrics

    rng = np.random.default_rng(6)
    gids = np.repeat(np.arange(5), 40)
    qids = rng.choice(gids, size=60)
    sim = rng.standard_normal((60, 200))
    assert 40 > metrics.COMPARE_MAX_POSITIVES
    ref = _sort_reference(sim, qids, gids)
    got = retrieval_metrics(sim, qids, gids, chunk_size=7)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_compare_and_searchsorted_paths_agree(monkeypatch):
    from pfcvr.engine import ranking as metrics

    rng = np.random.default_rng(7)
    gids = rng.integers(0, 20, size=150)
    qids = rng.choice(gids, size=120)
    sim = np.round(rng.standard_normal((120, 150)), 1)      # rounding makes many ties
    small = rank_statistics(sim, qids, gids, chunk_size=50)
    monkeypatch.setattr(metrics, "COMPARE_MAX_POSITIVES", 0)
    large = rank_statistics(sim, qids, gids, chunk_size=50)
    np.testing.assert_array_equal(small.first_rank, large.first_rank)
    np.testing.assert_array_equal(small.ap, large.ap)
    np.testing.assert_array_equal(small.inp, large.inp)


def test_integer_scores_are_accepted():
    m = retrieval_metrics(np.array([[3, 1, 2]]), [7], [7, 8, 7])
    assert m["mAP"] == pytest.approx(100 * (1 / 1 + 2 / 2) / 2)


def test_metric_names_are_what_the_ranks_give():
    """METRIC_NAMES (the report, the MLflow view, the metrics files) and RankStats.metrics (what
    is computed) name the same metrics in the same order: a metric added to one is added to
    both."""
    stats = RankStats(first_rank=np.array([1, 3]), ap=np.array([1.0, 0.5]),
                      inp=np.array([1.0, 0.25]), n_pos=np.array([1, 2]))
    assert tuple(stats.metrics()) == METRIC_NAMES
    assert tuple(retrieval_metrics(np.array([[0.9, 0.1]]), [1], [1, 2])) == METRIC_NAMES
