"""Format detection: which loader reads a file or a folder.

Files are sniffed by content (the first parseable records), not trusted by name, except that
2023 meta files may also be recognised by name (`meta*.jsonl[.gz]`). In a folder only top-level
files are considered; files that are clearly not data (README, SOURCE.md, images...) are ignored.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from .schema import DataFormatError, open_text

log = logging.getLogger("ml.data")

# File kinds.
A2023_REVIEWS = "amazon2023_reviews"
A2023_META = "amazon2023_meta"
A2018 = "amazon2018"
RATINGS_CSV = "ratings_csv"
UNKNOWN = "unknown"

# Files in a folder with these suffixes are never data (skipped without sniffing).
_NON_DATA_SUFFIXES = {
    ".md",
    ".txt",
    ".rst",
    ".html",
    ".htm",
    ".pdf",
    ".py",
    ".ipynb",
    ".yaml",
    ".yml",
    ".toml",
    ".ini",
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".webp",
    ".bmp",
    ".svg",
    ".zip",
    ".tar",
    ".npy",
    ".npz",
    ".pkl",
    ".parquet",
    ".lock",
    ".log",
    ".cfg",
    ".sh",
}
_SNIFF_LINES = 50
CSV_REQUIRED = ("user_id", "item_id", "rating")


def is_meta_name(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith("meta") and (
        name.endswith(".jsonl")
        or name.endswith(".jsonl.gz")
        or name.endswith(".json")
        or name.endswith(".json.gz")
    )


def classify_record(rec: dict) -> str:
    keys = set(rec)
    if {"reviewerID", "asin", "overall"} <= keys:
        return A2018
    if "user_id" in keys and "rating" in keys and ("parent_asin" in keys or "asin" in keys):
        return A2023_REVIEWS
    if (
        "user_id" not in keys
        and ("parent_asin" in keys or "asin" in keys)
        and (
            keys
            & {
                "main_category",
                "title",
                "features",
                "description",
                "images",
                "store",
                "details",
                "categories",
            }
        )
    ):
        return A2023_META
    return UNKNOWN


def csv_header(line: str) -> list[str]:
    try:
        return [c.strip().lower().lstrip("\ufeff") for c in next(csv.reader([line]))]
    except (csv.Error, StopIteration):
        return []


def sniff_file(path: Path) -> str:
    """The kind of one file (UNKNOWN if not recognised). Never raises for unreadable content."""
    try:
        with open_text(path) as fh:
            seen = 0
            for line in fh:
                s = line.strip().lstrip("\ufeff")
                if not s:
                    continue
                seen += 1
                if seen > _SNIFF_LINES:
                    break
                if s.startswith("{"):
                    try:
                        rec = json.loads(s)
                    except ValueError:
                        continue  # a malformed line; try the next one
                    if isinstance(rec, dict):
                        kind = classify_record(rec)
                        if kind == A2023_REVIEWS and is_meta_name(path):
                            return A2023_META
                        if kind != UNKNOWN:
                            return kind
                    continue
                # Not JSON: only the first non-blank line can be a CSV header.
                if seen == 1:
                    header = csv_header(s)
                    if all(c in header for c in CSV_REQUIRED):
                        return RATINGS_CSV
                return UNKNOWN
    except (OSError, EOFError, UnicodeError) as exc:  # gzip errors are OSError/EOFError
        log.debug("cannot sniff %s: %s", path, exc)
        return UNKNOWN
    return UNKNOWN


def _candidate(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    suffixes = [s.lower() for s in path.suffixes]
    return not (suffixes and suffixes[-1] in _NON_DATA_SUFFIXES)


def detect(path: str | Path) -> tuple[str, list[tuple[Path, str]]]:
    """(source, [(file, kind), ...]) for a path; raises DataFormatError when nothing fits.

    source is "amazon2023", "amazon2018" or "ratings_csv". Files are returned in name order;
    for a folder, only recognised top-level files are returned.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFormatError(f"data path does not exist: {p}")
    if p.is_file():
        kind = sniff_file(p)
        if kind == UNKNOWN:
            raise DataFormatError(
                f"{p}: not a known data format (expected Amazon Reviews 2023 JSONL, Amazon Review Data "
                f"2018 JSON lines, or a ratings CSV with columns {', '.join(CSV_REQUIRED)}[, timestamp])"
            )
        if kind == A2023_META:
            raise DataFormatError(
                f"{p}: Amazon 2023 product metadata only, no reviews; pass the folder holding the reviews too"
            )
        return _source_of(kind), [(p, kind)]
    if not p.is_dir():
        raise DataFormatError(f"{p}: neither a file nor a folder")
    entries = sorted((c for c in p.iterdir() if c.is_file()), key=lambda c: c.name)
    if not entries:
        raise DataFormatError(f"{p}: empty folder (no files at its top level)")
    found: list[tuple[Path, str]] = []
    skipped: list[str] = []
    for c in entries:
        if not _candidate(c):
            continue
        kind = sniff_file(c)
        if kind == UNKNOWN and is_meta_name(c):
            kind = A2023_META  # named meta*.jsonl but no recognisable line: let the loader count them
        if kind == UNKNOWN:
            skipped.append(c.name)
        else:
            found.append((c, kind))
    if not found:
        raise DataFormatError(
            f"{p}: no data files of a known format at the top level "
            f"({len(entries)} file(s) looked at{': ' + ', '.join(skipped[:5]) if skipped else ''})"
        )
    if skipped:
        log.warning(
            "%s: ignoring %d file(s) of no known format: %s", p, len(skipped), ", ".join(skipped[:10])
        )
    kinds = {k for _, k in found}
    if kinds <= {A2023_REVIEWS, A2023_META}:
        if A2023_REVIEWS not in kinds:
            raise DataFormatError(f"{p}: only Amazon 2023 product metadata files, no review files")
        return "amazon2023", found
    if len(kinds) > 1:
        names = ", ".join(f"{c.name} ({k})" for c, k in found[:10])
        raise DataFormatError(f"{p}: mixes data formats, cannot tell which to load: {names}")
    return _source_of(kinds.pop()), found


def _source_of(kind: str) -> str:
    return {
        A2023_REVIEWS: "amazon2023",
        A2023_META: "amazon2023",
        A2018: "amazon2018",
        RATINGS_CSV: "ratings_csv",
    }[kind]
