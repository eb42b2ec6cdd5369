"""The SYNTHETIC demo "fashion world": a folder in the Amazon Reviews 2023 (Amazon_Fashion) format.

Nothing it writes is real: customers, products, reviews, prices and pictures all come from a small
generative model driven by one seed. The demo (`make run`, `python -m ml demo-data`) and the tests
use it to show that a hybrid model (image + text embeddings of the products, plus who rated what)
beats popularity and matrix factorisation -- in particular on products nobody has rated yet.

It is not part of the library: `ml` never imports it (the `demo-data` command does, when run).

- `demo.vocabulary`  garment types, colours, patterns, styles, stores and review wording;
- `demo.world`       the generative model: products, customers, who reviews what, ratings, MU;
- `demo.text`        review lines and product meta lines;
- `demo.images`      the product pictures (drawn, or Fashion-MNIST tinted) and their variants;
- `demo.writer`      `generate_world` and `with_image_urls`: the files, in order.

Same seed and parameters give byte-identical files; nothing depends on the wall clock.
"""

from demo.images import FASHION_MNIST_DIRS, find_fashion_mnist
from demo.writer import (
    COLD_RATINGS_FILE,
    IMAGES_DIR,
    META_FILE,
    README_FILE,
    REVIEWS_FILE,
    TRUTH_DIR,
    WORLD_FILE,
    generate_world,
    with_image_urls,
)

__all__ = [
    "generate_world",
    "with_image_urls",
    "find_fashion_mnist",
    "REVIEWS_FILE",
    "META_FILE",
    "IMAGES_DIR",
    "TRUTH_DIR",
    "COLD_RATINGS_FILE",
    "WORLD_FILE",
    "README_FILE",
    "FASHION_MNIST_DIRS",
]
