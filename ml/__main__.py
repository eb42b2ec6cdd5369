"""Command line: `python -m ml {train,evaluate,demo-data,describe,fetch-images} ...`.

Bad input (missing path, unknown format, bad option) prints one clear line and exits non-zero;
it never prints a stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ml.argtypes import positive_int
from ml.config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml", description="Hybrid fashion recommender: data, training, evaluation."
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model version")
    t.add_argument(
        "--data",
        required=True,
        help="a 2023-format folder, a 2018 JSON-lines file, or a ratings CSV (or folder of CSVs)",
    )
    t.add_argument(
        "--out", help="artifact directory; default: a new version in the model registry, published as CURRENT"
    )
    t.add_argument(
        "--split",
        default="none",
        choices=("none", "last", "time"),
        help="hold out test ratings before training (for `evaluate`); default none",
    )
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-images", action="store_true", help="ignore product images")
    t.add_argument("--no-text", action="store_true", help="ignore review and product text")
    t.add_argument(
        "--with-feedback",
        action="store_true",
        help="also train on the live feedback the service received (RECSYS_FEEDBACK_FILE)",
    )

    e = sub.add_parser("evaluate", help="evaluate against baselines; writes metrics.json and plots")
    e.add_argument("--data", required=True)
    e.add_argument(
        "--model", help="a model directory (its config is reused; retrained on the split if it saw test data)"
    )
    e.add_argument("--report", required=True, help="report folder")
    e.add_argument(
        "--split",
        choices=("last", "time"),
        action="append",
        help="default: last, plus time when timestamps exist",
    )
    e.add_argument("--epochs", type=positive_int)

    d = sub.add_parser("demo-data", help="generate the SYNTHETIC fashion world (2023 format)")
    d.add_argument("--out", required=True)
    d.add_argument("--customers", type=positive_int, default=400)
    d.add_argument("--products", type=positive_int, default=240)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--image-format", choices=("png", "jpg"), default="png")
    d.add_argument(
        "--image-variation",
        choices=("auto", "per-product", "jitter"),
        default="auto",
        help="auto: a picture per product up to 2,000 products, cheap variants of shared pictures above",
    )

    s = sub.add_parser("describe", help="load a data set and print its counts")
    s.add_argument("--data", required=True)

    f = sub.add_parser(
        "fetch-images",
        help="download every product photo given as an URL into the image cache "
        "(what `train` does first); prints the report",
    )
    f.add_argument("--data", required=True)
    f.add_argument("--concurrency", type=positive_int, help="downloads in flight (default 16)")
    f.add_argument("--timeout", type=float, help="seconds per request (default 10)")
    f.add_argument("--retries", type=int, help="retries after an error, a timeout or a 5xx (default 3)")
    f.add_argument("--report", help="also write the report (JSON) here")
    f.add_argument("--no-progress", action="store_true")
    return p


def _config(args):
    from ml.train import TrainConfig

    cfg = TrainConfig(seed=getattr(args, "seed", 0) or 0)
    if getattr(args, "epochs", None):
        cfg.epochs = args.epochs
    if getattr(args, "no_images", False):
        cfg.use_images = False
    if getattr(args, "no_text", False):
        cfg.use_text = False
    return cfg


def _run(args) -> int:
    settings = Settings.from_env()
    data = getattr(args, "data", None)
    if data is not None and not Path(data).exists():  # before the seconds of importing TensorFlow
        raise FileNotFoundError(f"data path not found: {data}")
    if args.command == "demo-data":
        from demo import generate_world  # the demo is no part of the library: imported when asked for

        summary = generate_world(
            args.out,
            n_customers=args.customers,
            n_products=args.products,
            seed=args.seed,
            image_format=args.image_format,
            image_variation=args.image_variation,
        )
        print(json.dumps(summary, indent=2, default=str))
        return 0
    if args.command == "describe":
        from ml.data import describe, load_dataset

        print(json.dumps(describe(load_dataset(args.data)), indent=2, default=str))
        return 0
    if args.command == "fetch-images":
        from ml.data import load_dataset
        from ml.data.images import fetch_images
        from ml.embed import image_keys

        kw = {
            k: v
            for k, v in (
                ("concurrency", args.concurrency),
                ("timeout_s", args.timeout),
                ("retries", args.retries),
            )
            if v is not None
        }
        products = load_dataset(args.data).products
        local, report = fetch_images(products, settings.cache_dir, progress=not args.no_progress, **kw)
        report = {
            "products": int(len(products)),
            "with_photo": sum(1 for k in image_keys(local["image"].fillna("").astype(str).tolist()) if k),
            **report,
            "cache_dir": str(settings.cache_dir / "images"),
        }
        text = json.dumps(report, indent=2)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(text + "\n")
        print(text)
        return 0
    if args.command == "train":
        from ml.registry import ModelRegistry
        from ml.train import train_model

        registry = ModelRegistry(settings.models_dir)
        out = Path(args.out) if args.out else registry.path_for(registry.new_version())
        manifest = train_model(
            args.data,
            out,
            _config(args),
            split=args.split,
            settings=settings,
            feedback_file=settings.feedback_file if args.with_feedback else None,
        )
        if not args.out:
            registry.publish(out.name)
            print(f"published model version {out.name} in {settings.models_dir}")
        print(
            json.dumps(
                {k: manifest[k] for k in ("version", "split", "metrics", "training_seconds")}, indent=2
            )
        )
        return 0
    if args.command == "evaluate":
        from ml.evaluate import evaluate

        config = _config(args) if args.epochs else None
        if config is not None and args.model:
            from ml.artifact import read_manifest
            from ml.train import TrainConfig

            manifest = read_manifest(args.model)
            config = TrainConfig.from_dict({**manifest["config"], "epochs": args.epochs})
        metrics = evaluate(
            args.data,
            args.report,
            args.model,
            config=config,
            splits=tuple(args.split) if args.split else None,
            settings=settings,
        )
        print(json.dumps(metrics, indent=2))
        print(f"report written to {args.report}")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    from ml.data import DataFormatError

    try:
        return _run(args)
    except (DataFormatError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
