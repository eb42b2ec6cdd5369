"""ml.data: the loaders read the real data sets (counts from their SOURCE.md) and small files written here."""

from __future__ import annotations

import collections
import gzip
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.config import REPO_ROOT
from ml.data import (
    PRODUCT_COLUMNS,
    REVIEW_COLUMNS,
    DataFormatError,
    Dataset,
    LoadReport,
    describe,
    load_dataset,
)

SHARED = REPO_ROOT.parent / "shared" / "data"
A2018_DIR = SHARED / "amazon-fashion-2018-5core"
A2018_FILE = A2018_DIR / "AMAZON_FASHION_5.json"
BLAIR_DIR = SHARED / "amazon-fashion-2023-ratings-blair"


def _require(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data set not present: {path}")


def _check_schema(ds: Dataset) -> None:
    r, p = ds.reviews, ds.products
    assert list(r.columns) == REVIEW_COLUMNS
    assert list(p.columns) == PRODUCT_COLUMNS
    assert r["rating"].dtype == np.float32
    assert r["timestamp"].dtype == np.float64
    assert r["order"].dtype == np.int64
    assert p["price"].dtype == np.float64
    for col in ("customer_id", "product_id", "title", "text"):
        assert pd.api.types.is_string_dtype(r[col]), col
        assert r[col].notna().all(), col
    for col in ("product_id", "title", "text", "image", "store", "categories"):
        assert pd.api.types.is_string_dtype(p[col]), col
        assert p[col].notna().all(), col
    assert r["rating"].between(1, 5).all()
    assert not r.duplicated(["customer_id", "product_id"]).any()
    assert p["product_id"].is_unique
    assert set(r["product_id"]) <= set(p["product_id"])
    assert r["order"].is_monotonic_increasing
    assert isinstance(ds.report, LoadReport)
    fp = ds.fingerprint()
    assert isinstance(fp, str) and len(fp) == 16


# ------------------------------------------------------------------------------ the real data sets


def test_amazon2018_real_file_matches_source_md():
    _require(A2018_FILE)
    ds = load_dataset(A2018_FILE)
    _check_schema(ds)
    assert ds.source == "amazon2018"
    # SOURCE.md: 3,176 reviews, 406 users, 31 products, 3,042 unique user-item pairs.
    assert ds.report.total_lines == 3176
    assert ds.report.total_malformed == 0  # the line with leading spaces is read, not skipped
    assert len(ds.reviews) == 3042
    assert ds.report.duplicates_dropped == 3176 - 3042
    assert ds.n_customers == 406
    assert len(ds.products) == 31
    assert ds.reviews["timestamp"].notna().all()

    # Independent reading of the raw file: histogram of all 3,176 lines as in SOURCE.md, and the
    # kept row per pair is the earliest (unixReviewTime, then line order).
    raw = [
        json.loads(line.strip())
        for line in A2018_FILE.read_text(encoding="utf-8").split("\n")
        if line.strip()
    ]
    assert collections.Counter(int(r["overall"]) for r in raw) == {5: 2158, 4: 471, 3: 337, 2: 93, 1: 117}
    earliest: dict[tuple[str, str], tuple[int, int, float]] = {}
    for i, r in enumerate(raw):
        key = (r["reviewerID"], r["asin"])
        cand = (r["unixReviewTime"], i, r["overall"])
        if key not in earliest or cand[:2] < earliest[key][:2]:
            earliest[key] = cand
    expected_hist = collections.Counter(str(int(v[2])) for v in earliest.values())
    d = describe(ds)
    assert d["rating_histogram"] == {str(k): expected_hist.get(str(k), 0) for k in range(1, 6)}
    got = {
        (c, p): float(x)
        for c, p, x in ds.reviews[["customer_id", "product_id", "rating"]].itertuples(index=False)
    }
    assert got == {k: v[2] for k, v in earliest.items()}
    assert (d["reviews"], d["customers"], d["products"], d["duplicates"], d["malformed"]) == (
        3042,
        406,
        31,
        134,
        0,
    )
    assert d["products_with_image"] == 0

    # The folder holding the file (plus SOURCE.md, ignored) reads the same.
    ds2 = load_dataset(A2018_DIR)
    assert ds2.source == "amazon2018"
    assert ds2.fingerprint() == ds.fingerprint()


def test_ratings_csv_real_folder_matches_source_md():
    _require(BLAIR_DIR)
    ds = load_dataset(BLAIR_DIR)
    _check_schema(ds)
    assert ds.source == "ratings_csv"
    assert ds.report.files == ["graph_test.csv", "graph_train.csv"]  # name order; SOURCE.md ignored
    # SOURCE.md: 26,707 ratings, 5,502 users, 7,642 items; 5:14552, 4:6164, 3:3174, 2:1430, 1:1387.
    d = describe(ds)
    assert d["reviews"] == 26707
    assert d["customers"] == 5502
    assert d["products"] == 7642
    assert d["rating_histogram"] == {"1": 1387, "2": 1430, "3": 3174, "4": 6164, "5": 14552}
    assert d["malformed"] == 0 and d["duplicates"] == 0
    assert ds.reviews["timestamp"].isna().all()  # no timestamp column
    assert ds.reviews["order"].tolist() == list(range(26707))
    # Counts per file add up (test file first).
    assert ds.report.lines["graph_test.csv"] + ds.report.lines["graph_train.csv"] == 26707
    # A single file of the folder reads on its own.
    one = load_dataset(BLAIR_DIR / "graph_test.csv")
    assert one.source == "ratings_csv" and len(one.reviews) == ds.report.lines["graph_test.csv"]


# ------------------------------------------------------------------------ Amazon 2023, small files


def _write_jsonl(path: Path, lines: list, gz: bool = False) -> None:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _review(user, parent, rating, ts_ms, title="t", text="x", asin=None):
    return {
        "rating": rating,
        "title": title,
        "text": text,
        "images": [],
        "asin": asin or parent,
        "parent_asin": parent,
        "user_id": user,
        "timestamp": ts_ms,
        "helpful_vote": 0,
        "verified_purchase": True,
    }


def _meta(parent, title="", images=None, **kw):
    rec = {
        "main_category": "AMAZON FASHION",
        "title": title,
        "average_rating": 4.0,
        "rating_number": 3,
        "features": ["soft", "cotton"],
        "description": ["A shirt."],
        "price": None,
        "images": images if images is not None else [],
        "videos": [],
        "store": "Acme",
        "categories": [],
        "details": {},
        "parent_asin": parent,
    }
    rec.update(kw)
    return rec


def _img(hi_res=None, large=None):
    return {"thumb": "https://example.com/t.jpg", "large": large, "variant": "MAIN", "hi_res": hi_res}


def _make_world(folder: Path, gz: bool) -> None:
    suffix = ".jsonl.gz" if gz else ".jsonl"
    reviews = [
        _review("U1", "P1", 5.0, 1_600_000_300_000, title="later dup"),  # duplicate of the next, later
        _review("U1", "P1", 2.0, 1_600_000_000_000, title="earliest"),
        _review("U1", "P2", 4, 1_600_000_100_000),
        _review("U2", "P1", 3.0, 1_600_000_200_000),
        '{"rating": 5.0, "user_id": "U3", "parent_asin": ',  # bad JSON
        _review("", "P1", 4.0, 1),  # missing user id
        _review("U3", "", 4.0, 1),  # missing parent_asin and asin -> asin fallback "" too
        _review("U3", "P2", 7.0, 1),  # rating out of range
        _review("U3", "P2", "five", 1),  # rating not a number
        _review("U3", "P3", 1.0, 1_600_000_000_000, asin="A-child"),  # parent_asin wins over asin
        {**_review("U4", "", 2.0, 1_600_000_000_000, asin="P4"), "parent_asin": None},  # asin fallback
        "",  # blank line: not counted
    ]
    _write_jsonl(folder / f"Amazon_Fashion{suffix}", reviews, gz)
    metas = [
        _meta("P1", "Local image wins", images=[_img(hi_res="https://example.com/p1.jpg")]),
        _meta(
            "P2",
            "URL image",
            images=[_img(hi_res=None, large="https://example.com/p2_large.jpg")],
            categories=["Clothing", "Shirts"],
            price="$12.50",
        ),
        _meta("P3", "Relative path", images=[_img(large="pics/p3.png")], price=19.99),
        _meta("P5", "Meta only, nobody rated it", images=[], price="None"),
        "not json at all",
        {"title": "no id"},
        _meta("P1", "second meta line for P1 is ignored"),
    ]
    _write_jsonl(folder / f"meta_Amazon_Fashion{suffix}", metas, gz)
    (folder / "images").mkdir()
    (folder / "images" / "P1.jpg").write_bytes(b"\xff\xd8fake")
    (folder / "images" / "P1.png").write_bytes(b"\x89PNGfake")  # .jpg is preferred
    (folder / "pics").mkdir()
    (folder / "pics" / "p3.png").write_bytes(b"\x89PNGfake")
    (folder / "README.md").write_text("# not data\n")
    # A subfolder must be ignored, even with review-like files in it.
    (folder / "truth").mkdir()
    _write_jsonl(folder / "truth" / "cold_ratings.jsonl", [_review("U9", "P9", 5.0, 1)])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_amazon2023_folder(tmp_path, gz, caplog):
    _make_world(tmp_path, gz)
    with caplog.at_level(logging.WARNING, logger="ml.data"):
        ds = load_dataset(tmp_path)
    _check_schema(ds)
    assert ds.source == "amazon2023"
    assert ds.path == str(tmp_path.resolve())
    suffix = ".jsonl.gz" if gz else ".jsonl"
    rev_name, meta_name = f"Amazon_Fashion{suffix}", f"meta_Amazon_Fashion{suffix}"
    assert sorted(ds.report.files) == sorted([rev_name, meta_name])

    # Malformed lines counted per file, warned about, not fatal.
    assert ds.report.lines[rev_name] == 11
    assert ds.report.malformed[rev_name] == 5
    assert ds.report.lines[meta_name] == 7
    assert ds.report.malformed[meta_name] == 2
    assert any("malformed" in rec.getMessage() and rev_name in rec.getMessage() for rec in caplog.records)

    r = ds.reviews.set_index(["customer_id", "product_id"])
    assert sorted(r.index) == [("U1", "P1"), ("U1", "P2"), ("U2", "P1"), ("U3", "P3"), ("U4", "P4")]
    # The duplicate keeps the earliest by timestamp, though it came later in the file.
    assert ds.report.duplicates_dropped == 1
    assert r.loc[("U1", "P1"), "title"] == "earliest"
    assert r.loc[("U1", "P1"), "rating"] == 2.0
    assert r.loc[("U1", "P1"), "timestamp"] == pytest.approx(1_600_000_000.0)  # ms -> s
    assert r.loc[("U1", "P1"), "order"] == 1
    assert ds.reviews["order"].tolist() == [1, 2, 3, 4, 5]

    p = ds.products.set_index("product_id")
    assert set(p.index) == {"P1", "P2", "P3", "P4", "P5"}  # P5: meta only; P4: reviews only
    assert p.loc["P1", "title"] == "Local image wins"  # the first meta line wins
    assert p.loc["P1", "image"] == str((tmp_path / "images" / "P1.jpg").resolve())
    assert p.loc["P2", "image"] == "https://example.com/p2_large.jpg"  # hi_res None -> large
    assert p.loc["P3", "image"] == str((tmp_path / "pics" / "p3.png").resolve())
    assert Path(p.loc["P3", "image"]).is_absolute()
    assert p.loc["P4", "image"] == "" and p.loc["P4", "title"] == ""
    assert p.loc["P5", "title"] == "Meta only, nobody rated it"
    assert p.loc["P2", "text"] == "soft cotton A shirt."
    assert p.loc["P2", "categories"] == "Clothing > Shirts"
    assert p.loc["P2", "store"] == "Acme"
    assert p.loc["P2", "price"] == pytest.approx(12.5)
    assert p.loc["P3", "price"] == pytest.approx(19.99)
    assert math.isnan(p.loc["P5", "price"]) and math.isnan(p.loc["P4", "price"])
    assert "U9" not in set(ds.reviews["customer_id"])  # truth/ ignored

    d = describe(ds)
    assert d["reviews"] == 5 and d["customers"] == 4 and d["products"] == 5
    assert d["products_with_image"] == 3
    assert d["malformed"] == 7 and d["duplicates"] == 1
    assert d["rating_histogram"] == {"1": 1, "2": 2, "3": 1, "4": 1, "5": 0}


def test_amazon2023_meta_detected_by_content_and_plain_equals_gz(tmp_path):
    plain, gz = tmp_path / "plain", tmp_path / "gz"
    plain.mkdir()
    gz.mkdir()
    _make_world(plain, gz=False)
    _make_world(gz, gz=True)
    # Rename the meta file so only its content tells what it is.
    (plain / "meta_Amazon_Fashion.jsonl").rename(plain / "products.jsonl")
    a, b = load_dataset(plain), load_dataset(gz)
    assert a.fingerprint() == b.fingerprint()
    assert set(a.products["product_id"]) == {"P1", "P2", "P3", "P4", "P5"}
    pd.testing.assert_frame_equal(a.reviews, b.reviews)


def test_duplicates_tie_on_timestamp_keep_file_order(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [_review("U", "P", 4.0, 1000, title="first")])
    _write_jsonl(
        tmp_path / "b.jsonl", [_review("U", "P", 1.0, 1000, title="second"), _review("U", "Q", 3.0, None)]
    )
    ds = load_dataset(tmp_path)
    assert ds.report.duplicates_dropped == 1
    assert ds.reviews["title"].tolist()[0] == "first"
    assert math.isnan(ds.reviews["timestamp"].iloc[1])


def test_ratings_csv_malformed_timestamp_and_duplicates(tmp_path):
    (tmp_path / "b.csv").write_text(
        "user_id,item_id,rating,timestamp,sentiment\n"
        "u1,i1,5,1600000300,0.5\n"
        "u1,i1,2,1600000000000,0.1\n"  # ms, earlier -> kept
        "u2,i1,x,1,0\n"
        "u2,,4,1,0\n"
        "u3,i2,0,1,0\n"
        "u3\n"
        "u3,i2,4.5,2020-01-01T00:00:00Z,0\n"
    )
    (tmp_path / "a.csv").write_text("user_id,item_id,rating\nu9,i9,1\n")
    ds = load_dataset(tmp_path)
    _check_schema(ds)
    assert ds.report.files == ["a.csv", "b.csv"]
    assert ds.report.malformed == {"a.csv": 0, "b.csv": 4}
    assert ds.report.duplicates_dropped == 1
    rows = ds.reviews.set_index(["customer_id", "product_id"])
    assert rows.loc[("u9", "i9"), "order"] == 0  # a.csv first
    assert rows.loc[("u1", "i1"), "rating"] == 2.0
    assert rows.loc[("u1", "i1"), "timestamp"] == pytest.approx(1_600_000_000.0)
    assert rows.loc[("u3", "i2"), "timestamp"] == pytest.approx(1_577_836_800.0)
    assert rows.loc[("u3", "i2"), "rating"] == 4.5


def test_amazon2018_gz_with_leading_spaces(tmp_path):
    lines = [
        json.dumps(
            {
                "overall": 5.0,
                "reviewerID": "R1",
                "asin": "A1",
                "reviewText": "great",
                "summary": "Five Stars",
                "unixReviewTime": 1441324800,
            }
        ),
        "   " + json.dumps({"overall": 3.0, "reviewerID": "R2", "asin": "A1", "unixReviewTime": 1441324801}),
        json.dumps({"overall": 4.0, "reviewerID": "R3"}),  # no asin
    ]
    _write_jsonl(tmp_path / "reviews.json.gz", lines, gz=True)
    ds = load_dataset(tmp_path / "reviews.json.gz")
    _check_schema(ds)
    assert ds.source == "amazon2018"
    assert ds.reviews["title"].tolist() == ["Five Stars", ""]
    assert ds.reviews["text"].tolist() == ["great", ""]
    assert ds.reviews["timestamp"].tolist() == [1441324800.0, 1441324801.0]
    assert ds.report.malformed == {"reviews.json.gz": 1}


def test_fingerprint_ignores_row_order_and_text(tmp_path):
    (tmp_path / "a.csv").write_text("user_id,item_id,rating\nu1,i1,5\nu2,i1,3\n")
    (tmp_path / "b.csv").write_text("item_id,rating,user_id\ni1,3,u2\ni1,5,u1\n")
    (tmp_path / "c.csv").write_text("user_id,item_id,rating\nu1,i1,5\nu2,i1,4\n")
    fa, fb, fc = (load_dataset(tmp_path / n).fingerprint() for n in ("a.csv", "b.csv", "c.csv"))
    assert fa == fb != fc


# ------------------------------------------------------------------------------------------ errors


def test_missing_path_raises(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    assert issubclass(DataFormatError, ValueError)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(DataFormatError, match="empty folder"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "name,content",
    [
        ("notes.txt", "hello world\n"),
        ("data.csv", "a,b,c\n1,2,3\n"),  # a CSV without user_id/item_id/rating
        ("data.json", '{"foo": 1}\n{"bar": 2}\n'),  # JSON lines of no known shape
        ("empty.jsonl", ""),
    ],
)
def test_unknown_file_raises(tmp_path, name, content):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(DataFormatError, match="not a known data format"):
        load_dataset(f)


def test_folder_without_known_files_raises(tmp_path):
    (tmp_path / "README.md").write_text("# nothing\n")
    (tmp_path / "x.json").write_text('{"foo": 1}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "r.csv").write_text("user_id,item_id,rating\nu,i,5\n")  # not top level
    with pytest.raises(DataFormatError, match="no data files of a known format"):
        load_dataset(tmp_path)


def test_folder_mixing_formats_raises(tmp_path):
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\nu,i,5\n")
    _write_jsonl(tmp_path / "r.jsonl", [_review("U", "P", 5.0, 1)])
    with pytest.raises(DataFormatError, match="mixes data formats"):
        load_dataset(tmp_path)


def test_meta_only_raises(tmp_path):
    _write_jsonl(tmp_path / "meta_x.jsonl", [_meta("P1", "x")])
    with pytest.raises(DataFormatError, match="no review"):
        load_dataset(tmp_path)
    with pytest.raises(DataFormatError, match="no reviews"):
        load_dataset(tmp_path / "meta_x.jsonl")
