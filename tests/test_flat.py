"""omendb.index.flat.exact_search against a brute-force NumPy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import brute_force_distances
from omendb.index import flat
from omendb.index.flat import METRICS, exact_search, vector_norms

# float32 distances computed through |x|^2 - 2x.q + |q|^2 lose absolute precision
# proportional to the magnitudes involved.
RTOL = 1e-4


def _tolerance(vectors: np.ndarray, queries: np.ndarray, metric: str) -> float:
    if metric == "cosine":
        return 1e-4
    scale = float(np.max(np.sum(vectors.astype(np.float64) ** 2, axis=1), initial=0.0)
                  + np.max(np.sum(queries.astype(np.float64) ** 2, axis=1), initial=0.0))
    return 1e-5 + 1e-5 * scale


def check_against_reference(vectors, queries, k, metric, allowed=None):
    """Assert exact_search returns the true k nearest (up to distance ties)."""
    norms = vector_norms(vectors)
    dist, pos = exact_search(vectors, norms, queries, k, metric, allowed)
    ref = brute_force_distances(vectors, queries, metric)
    candidates = np.arange(len(vectors)) if allowed is None else np.flatnonzero(allowed)
    expected_k = min(k, candidates.size)
    atol = _tolerance(vectors, queries, metric)
    assert dist.shape == (len(queries), expected_k)
    assert pos.shape == (len(queries), expected_k)
    assert pos.dtype.kind == "i"
    for qi in range(len(queries)):
        got = pos[qi]
        assert len(set(got.tolist())) == expected_k, "a row was returned twice"
        assert np.isin(got, candidates).all(), "returned a row that is not allowed"
        # reported distances are the true distances of the returned rows ...
        np.testing.assert_allclose(dist[qi], ref[qi, got], rtol=RTOL, atol=atol)
        # ... sorted nearest first ...
        assert np.all(np.diff(dist[qi]) >= -atol)
        # ... and they are the k smallest of all allowed rows.
        best = np.sort(ref[qi, candidates])[:expected_k]
        np.testing.assert_allclose(np.sort(ref[qi, got]), best, rtol=RTOL, atol=atol)
    return dist, pos


@pytest.fixture
def data(rng):
    vectors = rng.normal(size=(500, 24)).astype(np.float32)
    queries = rng.normal(size=(7, 24)).astype(np.float32)
    return vectors, queries


@pytest.mark.parametrize("metric", METRICS)
def test_matches_brute_force(metric, data):
    vectors, queries = data
    dist, pos = check_against_reference(vectors, queries, 10, metric)
    # continuous random data: no ties, so the ids themselves must match too
    ref = brute_force_distances(vectors, queries, metric)
    np.testing.assert_array_equal(pos, np.argsort(ref, axis=1, kind="stable")[:, :10])


def test_distance_definitions():
    x = np.array([[3.0, 4.0], [1.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    norms = vector_norms(x)
    np.testing.assert_allclose(norms, [5.0, 1.0, 2.0])
    d, p = exact_search(x, norms, q, 3, "l2")
    assert p[0].tolist() == [1, 2, 0]
    np.testing.assert_allclose(d[0], [0.0, 9.0, 20.0], atol=1e-5)  # squared Euclidean
    d, p = exact_search(x, norms, q, 3, "cosine")
    assert p[0].tolist() == [1, 0, 2]
    np.testing.assert_allclose(d[0], [0.0, 1 - 3 / 5, 2.0], atol=1e-6)
    d, p = exact_search(x, norms, q, 3, "dot")
    assert p[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(d[0], [-3.0, -1.0, 2.0], atol=1e-6)


def test_identical_vector_has_zero_distance(rng):
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    for metric in ("l2", "cosine"):
        d, p = exact_search(vectors, vector_norms(vectors), vectors[17:18], 1, metric)
        assert p[0, 0] == 17
        assert abs(d[0, 0]) < 1e-5


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n_allowed", [0, 1, 5, 40, 250, 499, 500])
def test_allowed_mask(metric, n_allowed, data, rng):
    # few rows -> gather path; many rows -> masked full scan
    vectors, queries = data
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[rng.choice(len(vectors), n_allowed, replace=False)] = True
    check_against_reference(vectors, queries, 10, metric, allowed)


@pytest.mark.parametrize("metric", METRICS)
def test_both_filter_paths_agree(metric, data, rng):
    vectors, queries = data
    norms = vector_norms(vectors)
    allowed = rng.random(len(vectors)) < 0.5
    masked = exact_search(vectors, norms, queries, 15, metric, allowed)
    gathered_positions = np.flatnonzero(allowed)
    d, p = exact_search(vectors[gathered_positions], norms[gathered_positions], queries, 15, metric)
    np.testing.assert_array_equal(masked[1], gathered_positions[p])
    np.testing.assert_allclose(masked[0], d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_rows(metric, rng):
    vectors = rng.normal(size=(6, 5)).astype(np.float32)
    queries = rng.normal(size=(3, 5)).astype(np.float32)
    dist, pos = check_against_reference(vectors, queries, 100, metric)
    assert dist.shape == (3, 6)
    for row in pos:
        assert sorted(row.tolist()) == list(range(6))


@pytest.mark.parametrize("metric", METRICS)
def test_k_larger_than_allowed_rows_never_returns_blocked_rows(metric, data):
    vectors, queries = data
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[::3] = True  # above the gather threshold: masked scan
    dist, pos = check_against_reference(vectors, queries, 400, metric, allowed)
    assert pos.shape[1] == allowed.sum()
    assert np.isfinite(dist).all()


def test_empty_inputs(rng):
    queries = rng.normal(size=(2, 4)).astype(np.float32)
    empty = np.zeros((0, 4), dtype=np.float32)
    dist, pos = exact_search(empty, vector_norms(empty), queries, 5, "l2")
    assert dist.shape == (2, 0) and pos.shape == (2, 0)
    vectors = rng.normal(size=(10, 4)).astype(np.float32)
    dist, pos = exact_search(vectors, vector_norms(vectors), queries, 5, "l2", np.zeros(10, bool))
    assert dist.shape == (2, 0) and pos.shape == (2, 0)


@pytest.mark.parametrize("metric", METRICS)
def test_batched_queries_equal_single_queries(metric, data):
    vectors, queries = data
    norms = vector_norms(vectors)
    batch_dist, batch_pos = exact_search(vectors, norms, queries, 12, metric)
    for qi in range(len(queries)):
        d, p = exact_search(vectors, norms, queries[qi:qi + 1], 12, metric)
        np.testing.assert_array_equal(batch_pos[qi], p[0])
        np.testing.assert_allclose(batch_dist[qi], d[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_blocked_batches_equal_one_block(metric, data, monkeypatch):
    vectors, queries = data
    norms = vector_norms(vectors)
    whole = exact_search(vectors, norms, queries, 8, metric)
    # force a score block of 2 queries at a time (and a last block of 1)
    monkeypatch.setattr(flat, "SCORE_BLOCK_BYTES", 2 * 4 * len(vectors))
    blocked = exact_search(vectors, norms, queries, 8, metric)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_allclose(whole[0], blocked[0], rtol=1e-5, atol=1e-4)


def test_memory_mapped_style_non_owning_views(rng):
    base = rng.normal(size=(200 * 6,)).astype(np.float32)
    vectors = base.reshape(200, 6)[50:150]  # a view, like a slice of a mapped column
    queries = rng.normal(size=(2, 6)).astype(np.float32)
    check_against_reference(vectors, queries, 7, "l2")


# ---------------------------------------------------------------- property tests
@st.composite
def search_problem(draw):
    dim = draw(st.integers(1, 12))
    n = draw(st.integers(1, 60))
    n_queries = draw(st.integers(1, 4))
    elements = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
    vectors = draw(hnp.arrays(np.float32, (n, dim), elements=elements))
    queries = draw(hnp.arrays(np.float32, (n_queries, dim), elements=elements))
    k = draw(st.integers(1, n + 5))
    use_mask = draw(st.booleans())
    allowed = draw(hnp.arrays(np.bool_, (n,))) if use_mask else None
    return vectors, queries, k, allowed


@pytest.mark.parametrize("metric", METRICS)
@settings(max_examples=50, deadline=None)
@given(problem=search_problem())
def test_property_exact_search_is_exact(metric, problem):
    vectors, queries, k, allowed = problem
    if metric == "cosine":
        # cosine of a (near-)zero vector is undefined; keep away from it
        assume(np.linalg.norm(vectors, axis=1).min() > 1e-2)
        assume(np.linalg.norm(queries, axis=1).min() > 1e-2)
    check_against_reference(vectors, queries, k, metric, allowed)


@pytest.mark.parametrize("metric", METRICS)
@settings(max_examples=50, deadline=None)
@given(problem=search_problem())
def test_property_batch_equals_singles(metric, problem):
    vectors, queries, k, allowed = problem
    norms = vector_norms(vectors)
    batch_dist, batch_pos = exact_search(vectors, norms, queries, k, metric, allowed)
    atol = _tolerance(vectors, queries, metric)
    for qi in range(len(queries)):
        d, p = exact_search(vectors, norms, queries[qi:qi + 1], k, metric, allowed)
        assert p.shape[1] == batch_pos.shape[1]
        # ties may be broken differently; the distances must agree
        np.testing.assert_allclose(batch_dist[qi], d[0], rtol=RTOL, atol=atol)


def test_one_blas_thread_pins_inside_and_restores_on_the_same_thread() -> None:
    # In a fresh interpreter: BLAS thread counts are process state other tests' threads change.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, threading
        from threadpoolctl import threadpool_info
        import omendb
        from omendb.index.blas import one_blas_thread

        def blas_threads():
            return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

        seen = {}

        def use(tag):
            seen[tag + " before"] = blas_threads()
            with one_blas_thread():
                seen[tag] = blas_threads()
                with one_blas_thread():
                    seen[tag + " nested"] = blas_threads()
                seen[tag + " after nested"] = blas_threads()
            seen[tag + " after"] = blas_threads()

        use("main")
        worker = threading.Thread(target=use, args=("worker",))
        worker.start()
        worker.join()
        print(json.dumps(seen))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(seen["main before"]) > 1, "needs a multi-threaded BLAS to mean anything"
    one = [1] * len(seen["main before"])
    assert seen["main"] == seen["main nested"] == seen["main after nested"] == one  # the inner exit kept the pin
    assert seen["main after"] == seen["main before"]
    # (OpenBLAS may ignore another thread's change to its process-wide count: a worker
    # thread's pin is best effort, but it never leaves a lasting change behind)
    assert seen["worker after"] == seen["worker before"] == seen["main before"]


@pytest.mark.parametrize("offset", [0.0, 300.0, 3000.0, 1e5])
def test_l2_is_exact_for_vectors_far_from_the_origin(offset: float) -> None:
    # |x|² - 2x·q + |q|² in float32 drowns the real distances of such vectors; the scan
    # re-ranks exactly, so neither the order nor the distances suffer.
    rng = np.random.default_rng(1)
    x = (offset + rng.normal(0, 1, (2000, 16))).astype(np.float32)
    q = x[:40] + rng.normal(0, 0.1, (40, 16)).astype(np.float32)
    dist, pos = exact_search(x, vector_norms(x), q, 10, "l2")
    truth = ((x.astype(np.float64)[None] - q.astype(np.float64)[:, None]) ** 2).sum(-1)
    assert (np.sort(pos, axis=1) == np.sort(np.argsort(truth, axis=1)[:, :10], axis=1)).all()
    np.testing.assert_allclose(dist, np.take_along_axis(truth, pos, axis=1), rtol=1e-5, atol=1e-5)
