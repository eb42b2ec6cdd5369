"""ANN library comparison behind ml.retrieval.HnswIndex: `python -m bench.ann_compare N LIB`
(LIB: numpy, hnswlib, hnswlib_l2, usearch, usearch_l2, faiss_hnsw_l2, faiss_ivf_5, faiss_ivf_10) on N
clustered 32-d vectors + a bias coordinate, inner product; prints build time, query p50 at k=500,
1000, 2000 (one thread), recall@k and the share of the true top-10 inside the k, RSS growth.
faiss-cpu and usearch are not in requirements: pip install them to rerun those rows."""

import json
import os
import sys
import time

import numpy as np


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def data(n, d=32, nq=200, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(200, d)).astype(np.float32)
    lab = rng.integers(0, 200, n)
    x = (centers[lab] + 0.7 * rng.normal(size=(n, d))).astype(np.float32) * 0.3
    b = (rng.gamma(1.0, 1.0, n) - 3).astype(np.float32)
    X = np.concatenate([x, b[:, None]], 1)
    q = (centers[rng.integers(0, 200, nq)] + 0.5 * rng.normal(size=(nq, d))).astype(np.float32) * 0.3
    Q = np.concatenate([q, np.ones((nq, 1), np.float32)], 1)
    return X, Q


def mips_to_l2(X):
    n2 = (X * X).sum(1)
    M = n2.max()
    return np.concatenate([X, np.sqrt(np.maximum(M - n2, 0))[:, None]], 1).astype(np.float32)


def qpad(Q):
    return np.concatenate([Q, np.zeros((len(Q), 1), np.float32)], 1)


S = None


def run(fn, Q, k):
    out, ts = [], []
    for q in Q:
        t = time.perf_counter()
        out.append(np.asarray(fn(q, k)))
        ts.append(time.perf_counter() - t)
    rk = np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(out, np.argpartition(-S, k, axis=1)[:, :k])])
    t10 = np.argpartition(-S, 10, axis=1)[:, :10]
    r10 = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(out, t10)])
    return {
        "p50_ms": round(float(np.percentile(ts, 50)) * 1000, 2),
        "recall_at_k": round(float(rk), 3),
        "top10_in_k": round(float(r10), 3),
    }


n = int(sys.argv[1])
which = sys.argv[2]
X, Q = data(n)
S = Q @ X.T
m0 = rss_mb()
res = {"n": n, "lib": which}
t = time.perf_counter()
if which == "numpy":
    fn = lambda q, k: np.argpartition(-(X @ q), k)[:k]
elif which.startswith("hnswlib"):
    import hnswlib

    l2 = which.endswith("l2")
    XX = mips_to_l2(X) if l2 else X
    idx = hnswlib.Index(space="l2" if l2 else "ip", dim=XX.shape[1])
    idx.init_index(max_elements=n, ef_construction=100, M=16)
    idx.set_num_threads(2)
    idx.add_items(XX, np.arange(n))
    idx.set_num_threads(1)
    if l2:
        Q = qpad(Q)

    def fn(q, k):
        idx.set_ef(int(k * 1.5))
        return idx.knn_query(q[None], k=k)[0][0]
elif which.startswith("usearch"):
    from usearch.index import Index

    l2 = which.endswith("l2")
    XX = mips_to_l2(X) if l2 else X
    idx = Index(
        ndim=XX.shape[1], metric="l2sq" if l2 else "ip", dtype="f32", connectivity=16, expansion_add=100
    )
    idx.add(np.arange(n), XX, threads=2)
    if l2:
        Q = qpad(Q)

    def fn(q, k):
        idx.expansion_search = int(k * 1.5)
        return idx.search(q, k, threads=1).keys
elif which.startswith("faiss_ivf"):
    import faiss

    faiss.omp_set_num_threads(2)
    frac = float(which.split("_")[-1]) / 100
    nlist = int(4 * np.sqrt(n))
    q0 = faiss.IndexFlatIP(X.shape[1])
    idx = faiss.IndexIVFFlat(q0, X.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    idx.train(X[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)])
    idx.add(X)
    faiss.omp_set_num_threads(1)
    idx.nprobe = max(4, int(nlist * frac))
    fn = lambda q, k: idx.search(q[None], k)[1][0]
elif which == "faiss_hnsw_l2":
    import faiss

    faiss.omp_set_num_threads(2)
    XX = mips_to_l2(X)
    idx = faiss.IndexHNSWFlat(XX.shape[1], 16)
    idx.hnsw.efConstruction = 100
    idx.add(XX)
    Q = qpad(Q)
    faiss.omp_set_num_threads(1)

    def fn(q, k):
        idx.hnsw.efSearch = int(k * 1.5)
        return idx.search(q[None], k)[1][0]


res["build_s"] = round(time.perf_counter() - t, 1)
for k in (500, 1000, 2000):
    res[f"k{k}"] = run(fn, Q, k)
res["rss_delta_mb"] = round(rss_mb() - m0)
print(json.dumps(res), flush=True)
