"""ml.catalog (filters by category prefix and price) and ml.retrieval.ContentIndex (similar
products by content), on small hand-made data: no model, no worker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.catalog import Catalog, Filters, UnknownCategory, category_key, read_attributes
from ml.retrieval import ContentIndex

PATHS = [
    "Clothing, Shoes & Jewelry > Shoes > Sandals",
    "Clothing, Shoes & Jewelry > Shoes > Boots > Ankle & Bootie",
    "Clothing, Shoes & Jewelry > Shoestrings",
    "Clothing, Shoes & Jewelry > Clothing > Dresses",
    "",
    "clothing, shoes & jewelry>shoes >sandals",
]
PRICES = [20.0, 80.0, 3.0, math.nan, 10.0, 45.5]


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(PATHS, PRICES)


def test_category_is_a_prefix_segment_by_segment(catalog):
    shoes = catalog.allowed(Filters(category="Clothing, Shoes & Jewelry > Shoes"))
    assert shoes.tolist() == [0, 1, 5]  # not "Shoestrings"; case and spaces ignored
    assert catalog.allowed(Filters(category=" clothing, shoes & jewelry ")).tolist() == [0, 1, 2, 3, 5]
    assert catalog.allowed(Filters(category="Clothing, Shoes & Jewelry > Shoes > Boots")).tolist() == [1]
    assert category_key(" A >b> C ") == "a > b > c"


def test_unknown_category_is_refused(catalog):
    for category in (
        "Clothing, Shoes & Jewelry > Sho",
        "Shoes",
        "Clothing, Shoes & Jewelry > Shoes > Sandals > X",
    ):
        with pytest.raises(UnknownCategory):
            catalog.allowed(Filters(category=category))


@pytest.mark.parametrize(
    "bad",
    [
        dict(category=" > "),
        dict(category=""),
        dict(max_price=-1.0),
        dict(max_price=math.nan),
        dict(max_price=math.inf),
    ],
)
def test_invalid_filters_are_refused(bad):
    with pytest.raises(ValueError):
        Filters(**bad)


def test_max_price_never_keeps_an_unknown_price(catalog):
    assert catalog.allowed(Filters(max_price=45.5)).tolist() == [0, 2, 4, 5]
    assert catalog.allowed(Filters(max_price=1000)).tolist() == [0, 1, 2, 4, 5]  # 3 has no price
    assert catalog.allowed(Filters(max_price=0)).tolist() == []
    both = Filters(category="Clothing, Shoes & Jewelry > Shoes", max_price=50)
    assert catalog.allowed(both).tolist() == [0, 5]
    assert catalog.allowed(None) is None and catalog.allowed(Filters()) is None


def test_prefix_counts(catalog):
    prefixes = catalog.prefixes()
    assert prefixes["clothing, shoes & jewelry"] == 5
    assert catalog.paths(np.array([5, 4])) == ["clothing, shoes & jewelry > shoes > sandals", ""]
    assert prefixes["clothing, shoes & jewelry > shoes > sandals"] == 2


def test_attributes_from_products_json_records_when_they_have_them():
    products = [{"product_id": "a", "categories": "X > Y", "price": 3.5}, {"product_id": "b", "price": None}]
    found = read_attributes(products, {})
    assert found.source == "artifact" and found.prefixes() == {"x": 1, "x > y": 1}
    assert found.prices[0] == 3.5 and math.isnan(found.prices[1])
    assert (
        read_attributes([{"product_id": "a"}], {"source": "amazon2023", "path": "/no/such"}).source == "none"
    )


def _brute_force(x: np.ndarray, i: int, k: int) -> list[int]:
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    sims = unit @ unit[i]
    sims[i] = -np.inf
    sims[~x.any(axis=1)] = -np.inf
    return list(np.lexsort((np.arange(len(x)), -sims))[:k])


def test_content_neighbours_are_the_nearest_by_cosine_never_the_product_itself():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(0.1, 10, size=(300, 1)).astype(np.float32)
    x[7] = 0  # no content: never a neighbour, and has none
    index = ContentIndex(x)
    for i in (0, 5, 299):
        pos, sims = index.neighbours(i, 10)
        assert list(pos) == _brute_force(x, i, 10)
        assert i not in pos and 7 not in pos
        assert np.all(np.diff(sims) <= 0)
        expected = [float(x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) for j in pos]
        np.testing.assert_allclose(sims, expected, atol=1e-5)
    assert len(index.neighbours(7, 5)[0]) == 0
    assert len(index.neighbours(0, 1000)[0]) == 298  # everyone else with content


def test_content_index_through_hnsw_finds_the_same_neighbours():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 24)).astype(np.float32)
    exact, graph = ContentIndex(x), ContentIndex(x, hnsw_min=1000)
    assert graph.kind == "hnswlib_hnsw_l2" and exact.kind == "exact_cosine"
    found = [
        len(set(exact.neighbours(i, 10)[0]) & set(graph.neighbours(i, 10)[0])) for i in range(0, 2000, 40)
    ]
    assert np.mean(found) / 10 >= 0.95


def test_position_lookups_in_a_sorted_filter():
    from ml.retrieval import positions_in, without_positions

    allowed = np.array([2, 5, 9, 40])
    assert positions_in(allowed, np.array([9, 3, 2, 41])).tolist() == [2, -1, 0, -1]
    assert without_positions(allowed, np.array([5, 40, 7, 5])).tolist() == [2, 9]
    assert without_positions(allowed, None) is allowed
    assert positions_in(np.zeros(0, np.int64), np.array([1])).tolist() == [-1]
