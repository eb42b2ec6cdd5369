"""The retrieval stage: part of the artifact, candidates exclude seen products and come back k at a
time, the index agrees with brute force, save/load is lossless, and distillation beats chance."""
from __future__ import annotations

import numpy as np
import pytest

from ml.recommender import Recommender
from ml.retrieval import (ExactIndex, HnswIndex, RetrievalConfig, Retriever, exact_top, rerank, serve, two_stage,
                          use_two_stage)
from ml.train import TrainConfig, train_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval") / "v1"
    manifest = train_model(world_dir, out, TrainConfig(epochs=2, verbose=0, progress=False))
    return out, manifest


@pytest.fixture(scope="module")
def loaded(artifact):
    out, _ = artifact
    return Recommender.load(out), Retriever.load(out)


def test_artifact_contains_the_retriever(artifact, loaded):
    out, manifest = artifact
    rec, ret = loaded
    section = manifest["retrieval"]
    assert section["index"]["type"] == "exact"  # 40 products: far below the ANN threshold
    assert section["vector_dim"] == section["dim"] + 1
    assert ret.product_vecs.shape == (rec.n_products, section["dim"] + 1)
    assert ret.customer_vecs.shape == (rec.tables.n_customers, section["dim"] + 1)
    assert np.all(ret.customer_vecs[:, -1] == 1.0)  # [v_c, 1] carries the product bias exactly
    assert section["heldout"]["customers"] > 0


def test_candidates_exclude_seen_and_come_back_k(loaded):
    rec, ret = loaded
    for u in range(rec.tables.n_customers):
        seen = rec.seen(u)
        for k in (1, 5, 17):
            cand = ret.candidates(u, k, seen)
            assert len(cand) == k
            assert len(np.unique(cand)) == k
            assert not np.isin(cand, seen).any()
        everything = ret.candidates(u, rec.n_products, seen)  # more than exists: what exists
        assert len(everything) == rec.n_products - len(np.unique(seen))


def test_two_stage_with_every_candidate_equals_exact(loaded):
    rec, ret = loaded
    for u in range(0, rec.tables.n_customers, 7):
        assert list(two_stage(rec, ret, u, top=5, k=rec.n_products)) == list(exact_top(rec, u, 5))


def test_rerank_orders_candidates_by_the_heads(loaded):
    rec, ret = loaded
    u = 3
    cand = ret.candidates(u, 12, rec.seen(u))
    pos, score, rating = rerank(rec, u, cand, top=12)
    assert sorted(pos.tolist()) == sorted(cand.tolist())
    assert np.all(np.diff(score) <= 0)
    assert np.all((rating >= 1) & (rating <= 5))


def test_serving_rule_uses_the_threshold(loaded):
    _, ret = loaded
    assert use_two_stage(40, 20, ret) and not use_two_stage(40, 40, ret) and not use_two_stage(10**6, 20, None)


def test_serve_says_which_path_served_and_keeps_top(loaded):
    rec, ret = loaded
    cid = rec.customers(1)[0]
    u = int(np.flatnonzero(rec.tables.customer_ids == cid)[0])
    staged = serve(rec, ret, cid, top=5, k=8, exact_max_products=10)
    exact = serve(rec, ret, cid, top=5, k=8, exact_max_products=40)
    assert [x["path"] for x in staged] == ["candidates"] * 5
    assert [x["path"] for x in exact] == ["exact"] * 5
    assert not set(x["product_id"] for x in staged) & set(rec.tables.product_ids[rec.seen(u)])
    everything = serve(rec, ret, cid, top=5, k=rec.n_products, exact_max_products=10)
    assert [x["product_id"] for x in everything] == [x["product_id"] for x in exact]


def test_ann_top_k_equals_brute_force_on_a_small_index():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 9)).astype(np.float32)
    ann = HnswIndex.build(vecs, ef_factor=100.0)  # explores the whole graph: exact
    exact = ExactIndex(vecs)
    for q in rng.normal(size=(20, 9)).astype(np.float32):
        assert set(ann.search(q, 50).tolist()) == set(exact.search(q, 50).tolist())
        brute = np.argsort(-(vecs @ q))[:50]
        assert set(exact.search(q, 50).tolist()) == set(brute.tolist())


def test_save_load_round_trip_gives_identical_candidates(tmp_path):
    rng = np.random.default_rng(1)
    vecs = np.concatenate([rng.normal(size=(5000, 8)), rng.normal(size=(5000, 1))], 1).astype(np.float32)
    users = np.concatenate([rng.normal(size=(30, 8)), np.ones((30, 1))], 1).astype(np.float32)
    cfg = RetrievalConfig(index_min_products=1000)
    from ml.retrieval import build_index
    index = build_index(vecs, cfg)
    assert index.kind == HnswIndex.kind
    ret = Retriever(users, vecs, index, {"index": {"type": index.kind, **index.params()}},
                    np.argsort(-vecs[:, -1])[:5])
    ret.save(tmp_path)
    back = Retriever.load(tmp_path)
    for u in range(30):
        exclude = rng.choice(5000, 40, replace=False)
        a, b = ret.candidates(u, 300, exclude), back.candidates(u, 300, exclude)
        assert a.tolist() == b.tolist()
        assert len(a) == 300 and not np.isin(a, exclude).any()


def test_distillation_recall_beats_random_candidates(artifact):
    _, manifest = artifact
    held = manifest["retrieval"]["heldout"]
    recall = held["student_only_recall@10_in_k"]["10"]  # the towers alone, no bias safety net
    chance = held["random_recall@10_in_k"]["10"]
    assert held["customers"] * 10 >= 50  # enough teacher top-10 items to compare
    assert recall >= chance + 0.2, (recall, chance)
