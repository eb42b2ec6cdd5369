"""Offline evaluation of the hybrid model against baselines, on the same split in the same run.

Splits: leave-last-out per customer (`metrics.json`) and, when the data has timestamps, a global
time split (`metrics_time.json`). Rating metrics (RMSE, MAE) over every test rating; ranking metrics
(Recall@10, NDCG@10) over all products the customer did not rate in train. Synthetic worlds that ship
`truth/cold_ratings.jsonl` also get a cold-start check: ranking never-rated products by content.

Baselines: global mean, user+item biases, MF, popularity, and the strongest simple top-N models,
EASE and item-kNN (their hyper-parameter chosen on a validation split carved from the training
ratings, never the test rows), and content-kNN on the hybrid's own product content vectors (when the
data has any). Every model is fitted on the same training rows and ranked on the same test rows.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ml import baselines
from ml.artifact import read_manifest
from ml.config import Settings
from ml.metrics import csr_from_pairs, mae, paired_bootstrap, ranking_metrics, rmse, squared_errors
from ml.recommender import Recommender
from ml.split import has_timestamps, split_reviews
from ml.train import TrainConfig, fit_artifact, is_synthetic

log = logging.getLogger(__name__)
MODEL_NAMES = ("hybrid", "global_mean", "bias", "mf", "popularity", "ease", "item_knn", "content_knn")


def _baseline_models(content: np.ndarray) -> dict:
    """The baselines, unfitted; content-kNN only when products have content vectors."""
    models = {
        "global_mean": baselines.GlobalMean(),
        "bias": baselines.BiasBaseline(),
        "mf": baselines.MatrixFactorization(),
        "popularity": baselines.Popularity(),
        "ease": baselines.EASE(),
        "item_knn": baselines.ItemKNN(),
    }
    if content.shape[1]:
        models["content_knn"] = baselines.ContentKNN(content)
    return models


def _fit_all(models: dict, frame: pd.DataFrame, n_c: int, n_p: int) -> dict:
    """Fit every model on the same training frame; returns what each chose and how long it took."""
    info = {}
    for name, m in models.items():
        started = time.time()
        m.fit(frame, n_c, n_p)
        info[name] = {"fit_seconds": round(time.time() - started, 1)}
        for attr in ("lambda_", "shrink_"):
            if hasattr(m, attr):
                info[name][attr.rstrip("_")] = getattr(m, attr)
                info[name]["validation_ndcg@10"] = {str(k): v for k, v in m.validation_.items()}
    return info


def _training_frame(train: pd.DataFrame, u: np.ndarray, i: np.ndarray) -> pd.DataFrame:
    """u, i, rating and t (recency rank: timestamp, then file order) of the training rows."""
    ts = train["timestamp"].fillna(-np.inf).to_numpy() if "timestamp" in train else np.zeros(len(train))
    order = train["order"].to_numpy() if "order" in train else np.arange(len(train))
    return pd.DataFrame(
        {
            "u": u,
            "i": i,
            "rating": train["rating"].to_numpy(np.float64),
            "t": np.lexsort((order, ts)).argsort(),
        }
    )


def _tables_frame(tables) -> pd.DataFrame:
    """The training ratings an artifact's feature tables hold, as a baseline training frame."""
    counts = np.diff(tables.rated_indptr)
    return pd.DataFrame(
        {
            "u": np.repeat(np.arange(tables.n_customers), counts),
            "i": tables.rated_indices.astype(np.int64),
            "rating": tables.rated_rating.astype(np.float64),
        }
    )


def _clean(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _ndcg_graded(scores: np.ndarray, gains: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k with graded gains, one value per row (customer); NaN where the row has no gain."""
    kk = min(k, scores.shape[1])
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    dcg = (np.take_along_axis(gains, top, axis=1) * disc).sum(1)
    idcg = (-np.sort(-gains, axis=1)[:, :kk] * disc).sum(1)
    return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def _ndcg_random(gains: np.ndarray, k: int) -> np.ndarray:
    """Expected NDCG@k of a uniformly random order, per row: every position holds the mean gain."""
    kk = min(k, gains.shape[1])
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    idcg = (-np.sort(-gains, axis=1)[:, :kk] * disc).sum(1)
    return np.where(idcg > 0, gains.mean(1) * disc.sum() / np.where(idcg > 0, idcg, 1.0), np.nan)


def cold_start_report(data_dir: Path, rec: Recommender, k: int = 10, seed: int = 0) -> dict | None:
    """Rank the never-rated products for each customer; graded relevance = true expected rating - 1.

    Comparisons: a random order (its exact expected NDCG; popularity cannot tell never-rated
    products apart, so "popularity" here would be a random order under another name) and
    content-kNN on the hybrid's own product content vectors, fitted on the artifact's training
    ratings. Each margin comes with a paired-bootstrap 95% interval over customers."""
    truth_file = Path(data_dir) / "truth" / "cold_ratings.jsonl"
    if not truth_file.is_file():
        return None
    truth = pd.read_json(truth_file, lines=True, dtype={"user_id": str, "parent_asin": str})
    cust_index = pd.Index(rec.tables.customer_ids)
    prod_index = pd.Index(rec.tables.product_ids)
    truth = truth.assign(
        u=cust_index.get_indexer(truth["user_id"]), i=prod_index.get_indexer(truth["parent_asin"])
    )
    truth = truth[(truth.u >= 0) & (truth.i >= 0)]
    if truth.empty:
        return None
    users = np.sort(truth.u.unique())
    items = np.sort(truth.i.unique())
    gains = np.zeros((len(users), len(items)))
    gains[np.searchsorted(users, truth.u), np.searchsorted(items, truth.i)] = truth.rating.to_numpy() - 1.0
    ndcg = {
        "hybrid": _ndcg_graded(rec.score_customers(users)[:, items], gains, k),
        "random": _ndcg_random(gains, k),
    }
    content = rec.tables.prod_content
    if content.shape[1]:
        knn = baselines.ContentKNN(content).fit(
            _tables_frame(rec.tables), rec.tables.n_customers, rec.tables.n_products
        )
        ndcg["content_knn"] = _ndcg_graded(knn.score(users)[:, items], gains, k)
    ok = np.logical_and.reduce([np.isfinite(v) for v in ndcg.values()])
    out = {
        "n_customers": int(ok.sum()),
        "n_products": int(len(items)),
        "relevance": "true expected rating - 1 (graded), ranking among never-rated products only",
        f"ndcg@{k}": {name: float(v[ok].mean()) for name, v in ndcg.items()},
    }
    for name in ndcg:
        if name != "hybrid":
            out[f"hybrid_minus_{name}"] = paired_bootstrap(ndcg["hybrid"][ok], ndcg[name][ok], seed=seed)
    return out


def _rmse_stat(squared_errors: np.ndarray) -> np.ndarray:
    return np.sqrt(squared_errors.mean(axis=-1))


def compare(units: dict[str, dict], model: str, seed: int = 0) -> dict:
    """`model` minus each other model, per metric, with a paired-bootstrap 95% interval
    (resampling test ratings for RMSE, customers for ranking metrics). Tells a real margin from
    test-set noise: an interval containing 0 is a tie."""
    out = {}
    for other, theirs in units.items():
        if other == model:
            continue
        out[other] = {
            key: paired_bootstrap(values, theirs[key], _rmse_stat if key == "rmse" else None, seed=seed)
            for key, values in units[model].items()
            if key in theirs and len(values)
        }
    return out


def evaluate_split(
    dataset,
    split: str,
    artifact: Path | None,
    config: TrainConfig,
    work_dir: Path,
    settings: Settings,
    k: int = 10,
    units_file: Path | None = None,
) -> tuple[dict, dict, Recommender]:
    """Metrics of the hybrid and the baselines on one split; returns (metrics, history, recommender).

    `units_file`: also save every model's per-unit values (squared error per test rating, recall and
    NDCG per ranked customer) as `<model>/<metric>` arrays, aligned across models and across runs on the
    same split, so runs (e.g. two training seeds) can be pooled and compared with `paired_bootstrap`."""
    train, test = split_reviews(dataset.reviews, split)
    if test.empty:
        raise ValueError(f"the {split!r} split leaves no test ratings")
    if artifact is None:
        artifact = work_dir / f"hybrid-{split}"
        log.info("training the hybrid on the %r split", split)
        fit_artifact(dataset, train, artifact, config, split, settings)
    rec = Recommender.load(artifact)
    cust_index = pd.Index(rec.tables.customer_ids)
    prod_index = pd.Index(rec.tables.product_ids)
    tu = cust_index.get_indexer(train["customer_id"].astype(str))
    ti = prod_index.get_indexer(train["product_id"].astype(str))
    su = cust_index.get_indexer(test["customer_id"].astype(str))
    si = prod_index.get_indexer(test["product_id"].astype(str))
    y = test["rating"].to_numpy(np.float64)
    n_c, n_p = rec.tables.n_customers, rec.tables.n_products

    models = _baseline_models(rec.tables.prod_content)
    fitted = _fit_all(models, _training_frame(train, tu, ti), n_c, n_p)
    known = su >= 0
    eval_users = np.unique(su[known])
    exclude = csr_from_pairs(tu, ti, n_c)
    relevant = csr_from_pairs(su[known], si[known], n_c)

    units: dict[str, dict] = {}  # per test rating (squared error) and per customer (ranking), for comparisons

    def row(name, predict, score_fn) -> dict:
        out: dict = {"rmse": None, "mae": None}
        units[name] = ranks = ranking_metrics(
            score_fn, eval_users, exclude, relevant, n_p, k=k, per_customer=True
        )
        if predict is not None:
            pred = np.asarray(predict, dtype=np.float64)
            out.update(rmse=rmse(y, pred), mae=mae(y, pred))
            units[name]["rmse"] = squared_errors(y, pred)
        for key in (f"recall@{k}", f"ndcg@{k}"):
            out[key] = _clean(float(ranks[key].mean())) if len(ranks[key]) else None
        return out

    results = {"hybrid": row("hybrid", rec.predict(su, si), rec.score_customers)}
    for name, m in models.items():
        # baselines know no unknown ids: give them the first index and let them fall back where they can
        results[name] = row(name, m.predict(np.where(su >= 0, su, n_c), np.where(si >= 0, si, n_p)), m.score)
    metrics = {
        "data": f"{dataset.source}:{dataset.path}" + (" (SYNTHETIC)" if is_synthetic(dataset) else ""),
        "split": {"last": "leave-last-out per customer", "time": "global time split (last 20% of time)"}[
            split
        ],
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "n_ranked_customers": int(len(eval_users)),
        "models": results,
        "hybrid_minus": compare(units, "hybrid", seed=config.seed),
        "baselines": fitted,
        "model_version": rec.version,
        "hybrid_ranking": rec.manifest.get("ranking", {}),  # the rule training chose, with its margins
        "hybrid_training_seconds": rec.manifest.get("training_seconds"),
    }
    if "content_knn" not in models:
        metrics["baselines"]["content_knn"] = {"skipped": "no product content (image/text) in this data"}
    if units_file is not None:
        np.savez(
            units_file,
            **{f"{name}/{key}": values for name, per in units.items() for key, values in per.items()},
        )
    history = json.loads((Path(artifact) / "history.json").read_text())
    return metrics, history, rec


def _plots(report_dir: Path, name: str, metrics: dict, history: dict, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for key in ("loss", "val_loss"):
        if key in history:
            axes[0].plot(history[key], label=key)
    axes[0].set_title("hybrid training loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    names = list(metrics["models"])
    for ax, metric_keys, title in (
        (axes[1], ("rmse", "mae"), "rating error (lower is better)"),
        (axes[2], (f"recall@{k}", f"ndcg@{k}"), "ranking (higher is better)"),
    ):
        width = 0.38
        for j, mk in enumerate(metric_keys):
            vals = [metrics["models"][n].get(mk) for n in names]
            ax.bar(
                np.arange(len(names)) + j * width, [v if v is not None else 0 for v in vals], width, label=mk
            )
        ax.set_xticks(np.arange(len(names)) + width / 2, names, rotation=30, ha="right")
        ax.set_title(title)
        ax.legend()
    _margin_panel(axes[3], metrics["hybrid_minus"], f"ndcg@{k}")
    fig.suptitle(metrics["data"] + " — " + metrics["split"], fontsize=9)
    fig.tight_layout()
    fig.savefig(report_dir / f"{name}.png", dpi=110)
    plt.close(fig)


def _margin_panel(ax, margins: dict, key: str) -> None:
    """Hybrid minus each baseline on `key`, with its 95% paired-bootstrap interval as error bars."""
    names = [n for n, m in margins.items() if m.get(key, {}).get("diff") is not None]
    diff = np.array([margins[n][key]["diff"] for n in names])
    lo_hi = np.array([margins[n][key]["ci95"] for n in names]).reshape(-1, 2)
    ax.barh(np.arange(len(names)), diff, xerr=np.abs(lo_hi.T - diff), color="tab:green", capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(len(names)), names)
    ax.set_title(f"hybrid minus baseline, {key} (95% CI)")


def evaluate(
    data,
    report_dir: str | Path,
    model_dir: str | Path | None = None,
    config: TrainConfig | None = None,
    splits: tuple[str, ...] | None = None,
    settings: Settings | None = None,
    k: int = 10,
) -> dict:
    """Evaluate and write `metrics.json` (+ `metrics_time.json`) and PNG plots to `report_dir`.

    A model directory trained on the same data and split is evaluated as it is; otherwise (e.g. a
    serving model trained on all data) a hybrid with the same configuration is retrained on the
    split's training part, so no test rating is ever seen in training."""
    from ml.data import load_dataset

    settings = settings or Settings.from_env()
    dataset = load_dataset(data) if isinstance(data, (str, Path)) else data
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    manifest = None
    if model_dir is not None:
        manifest = read_manifest(model_dir)
        config = config or TrainConfig.from_dict(manifest["config"])
    config = config or TrainConfig()
    if splits is None:
        splits = ("last", "time") if has_timestamps(dataset.reviews) else ("last",)
    primary = None
    with tempfile.TemporaryDirectory(
        prefix="eval-", dir=settings.var_dir if settings.var_dir.exists() else None
    ) as work:
        for split in splits:
            artifact = None
            if (
                manifest
                and manifest.get("split") == split
                and manifest["data"]["fingerprint"] == dataset.fingerprint()
            ):
                artifact = Path(model_dir)
            name = "metrics" if split == splits[0] else f"metrics_{split}"
            metrics, history, rec = evaluate_split(
                dataset,
                split,
                artifact,
                config,
                Path(work),
                settings,
                k,
                units_file=report_dir / f"{name}_units.npz",
            )
            if split == splits[0] and is_synthetic(dataset):
                cold = cold_start_report(Path(dataset.path), rec, k)
                if cold:
                    metrics["cold_start"] = cold
            (report_dir / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
            _plots(report_dir, name, metrics, history, k)
            primary = primary or metrics
    return primary
