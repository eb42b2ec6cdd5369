"""Download product images into a local cache, politely and without ever raising per image.

`ImageDownloader.fetch({product_id: url})` -> `FetchResult(paths, failures, reasons)`:
- the cache file is named by a hash of the URL (keeping the URL's extension), so the same URL is
  downloaded once, and a cached file is reused without any request: a second run fetches only what
  is missing (what failed or was never tried);
- writes are atomic (temp file in the cache folder, then rename), so a crash leaves no partial
  image; only a body that passed the content checks is renamed into place;
- at most `concurrency` downloads run at once (a thread pool), each request with `timeout_s`
  (connect and between bytes);
- content checks: a non-image Content-Type, a body larger than `max_bytes` (by Content-Length or
  while streaming), a body shorter than its Content-Length, a body PIL cannot identify, an image
  of more than `max_pixels` pixels (checked from the header, before decoding), and an image whose
  data ends early (decoded in full);
- errors, timeouts, truncated bodies and 5xx/408/429 answers are retried `retries` times with
  exponential backoff (`backoff_s * 2**attempt`); other 4xx (404...) and content errors are not;
- failures are recorded as product_id -> message (`failures`) and product_id -> reason code
  (`reasons`, one of `REASONS` or `http_<status>`), never raised.

`localize_images(products, downloader)` replaces URL images in a products frame with the cached
local paths ("" where the download failed); `fetch_images(products, cache_dir)` builds the
downloader with this module's defaults and returns the frame and a report for logs and manifests.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import requests
from tqdm.auto import tqdm

log = logging.getLogger("ml.data.images")

_EXT_RE = re.compile(r"^\.[a-z0-9]{1,5}$")
_RETRY_STATUS = {408, 429}
_USER_AGENT = "fashion-recsys-image-fetcher/1.0"

# Defaults for training and `python -m ml fetch-images` (local constants until ml.config grows
# image-fetch settings): Amazon photos are well under 1 MB and a few megapixels.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.5
DEFAULT_CONCURRENCY = 16
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # "huge": a 6,000 x 6,000 photo is 36 Mpx
IMAGE_CACHE_SUBDIR = "images"  # under Settings.cache_dir

# Reason codes (plus "http_<status>" for an HTTP error answer).
REASONS = (
    "no_url",  # empty image reference
    "unsupported_url",  # not http(s)
    "timeout",  # no answer / no bytes within timeout_s (after retries)
    "connection",  # refused, reset, DNS...
    "not_image",  # Content-Type or body is not an image PIL can read
    "truncated",  # body shorter than announced, or image data ends early
    "too_large",  # more than max_bytes
    "too_many_pixels",  # more than max_pixels (a decompression bomb or a poster-size scan)
    "empty",  # 200 with no body
    "error",  # anything else (a bug; the message says what)
)


@dataclass
class FetchResult:
    """paths: id -> local file (downloaded or cached); failures: id -> message; reasons: id -> code."""

    paths: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0  # ids whose image was fetched over the network in this call
    cached: int = 0  # ids whose image was already in the cache (no request)
    seconds: float = 0.0

    def fail(self, key: str, code: str, message: str) -> None:
        self.failures[key] = message
        self.reasons[key] = code

    def by_reason(self) -> dict[str, int]:
        """Failure counts per reason code, most frequent first."""
        return dict(collections.Counter(self.reasons.values()).most_common())


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool, code: str = "error"):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.code = code


def is_url(value: str) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def check_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> None:
    """Raise `_Failure` unless `path` is a complete image of at most `max_pixels` pixels."""
    from PIL import Image, UnidentifiedImageError

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise _Failure(f"image of {w}x{h} pixels (more than {max_pixels})", False, "too_many_pixels")
            im.load()  # decodes everything: a truncated file raises here
    except _Failure:
        raise
    except UnidentifiedImageError as exc:
        raise _Failure(f"not an image ({exc})", False, "not_image") from None
    except Image.DecompressionBombError as exc:
        raise _Failure(f"image too large to decode ({exc})", False, "too_many_pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: "image file is truncated", broken data
        msg = str(exc)
        code = "truncated" if "truncat" in msg.lower() or "end of file" in msg.lower() else "not_image"
        raise _Failure(
            f"{'truncated image' if code == 'truncated' else 'unreadable image'} ({msg})",
            code == "truncated",
            code,
        ) from None


class ImageDownloader:
    def __init__(
        self,
        cache_dir: str | Path,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int | None = None,
        check_content: bool = True,
        stop: threading.Event | None = None,
    ):
        """`stop`: once set, the downloads not yet started fail at once as "cancelled" (how a
        training run whose text stage failed lets go of a fetch running beside it)."""
        self.cache_dir = Path(cache_dir)
        self.stop = stop
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.concurrency = max(1, int(concurrency))
        self.progress = progress
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        self.check_content = bool(check_content)
        self._local = threading.local()

    # ------------------------------------------------------------------ public

    def cache_path(self, url: str) -> Path:
        """Where `url` is (or would be) cached: sha256 of the URL + the URL path's extension."""
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:40]
        ext = os.path.splitext(urlparse(url).path)[1].lower()
        if not _EXT_RE.match(ext):
            ext = ""
        return self.cache_dir / f"{digest}{ext}"

    def fetch(self, urls: Mapping[str, str]) -> FetchResult:
        started = time.perf_counter()
        result = FetchResult()
        by_url: dict[str, list[str]] = {}
        for key, url in urls.items():
            if not isinstance(url, str) or not url.strip():
                result.fail(key, "no_url", "no URL")
            elif not is_url(url.strip()):
                result.fail(key, "unsupported_url", f"unsupported URL (http/https only): {url[:100]}")
            else:
                by_url.setdefault(url.strip(), []).append(key)
        if not by_url:
            result.seconds = time.perf_counter() - started
            return result
        self.cache_dir.mkdir(parents=True, exist_ok=True)

        todo: list[str] = []
        for url, keys in by_url.items():
            target = self.cache_path(url)
            if target.is_file() and target.stat().st_size > 0:
                result.cached += len(keys)
                for k in keys:
                    result.paths[k] = target
            else:
                todo.append(url)
        if todo:
            self._fetch_all(todo, by_url, result)
        result.seconds = time.perf_counter() - started
        if result.failures:
            log.warning(
                "image download: %d of %d id(s) failed, by reason %s (e.g. %s)",
                len(result.failures),
                len(urls),
                result.by_reason(),
                next(iter(result.failures.items())),
            )
        return result

    # ----------------------------------------------------------------- private

    def _fetch_all(self, todo: list[str], by_url: dict[str, list[str]], result: FetchResult) -> None:
        bar = tqdm(
            total=len(todo),
            desc="fetch images",
            unit="img",
            disable=not self.progress,
            leave=False,
            mininterval=0.5,
        )
        try:
            with ThreadPoolExecutor(
                max_workers=min(self.concurrency, len(todo)), thread_name_prefix="image-fetch"
            ) as pool:
                futures = {pool.submit(self._download, url): url for url in todo}
                for fut in as_completed(futures):
                    url = futures[fut]
                    try:
                        path = fut.result()
                    except _Failure as exc:
                        for k in by_url[url]:
                            result.fail(k, exc.code, exc.reason)
                    except Exception as exc:  # never raise for one image
                        for k in by_url[url]:
                            result.fail(k, "error", f"{type(exc).__name__}: {exc}")
                    else:
                        result.downloaded += len(by_url[url])
                        for k in by_url[url]:
                            result.paths[k] = path
                    bar.update(1)
                    if result.failures:
                        bar.set_postfix(failed=len(result.failures), refresh=False)
        finally:
            bar.close()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = _USER_AGENT
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        attempt = 0
        while True:
            if self.stop is not None and self.stop.is_set():
                raise _Failure("cancelled: the training run stopped", False, "cancelled")
            try:
                self._get_to(url, target)
                return target
            except _Failure as exc:
                if not exc.retry or attempt >= self.retries:
                    if attempt:
                        raise _Failure(
                            f"{exc.reason} (after {attempt + 1} attempts)", False, exc.code
                        ) from None
                    raise
            time.sleep(self.backoff_s * (2**attempt))
            attempt += 1

    def _get_to(self, url: str, target: Path) -> None:
        try:
            resp = self._session().get(url, timeout=self.timeout_s, stream=True)
        except requests.Timeout as exc:
            raise _Failure(f"timeout: {exc}", True, "timeout") from None
        except requests.RequestException as exc:
            raise _Failure(f"{type(exc).__name__}: {exc}", True, "connection") from None
        with resp:
            status = resp.status_code
            if status != 200:
                retry = status >= 500 or status in _RETRY_STATUS
                raise _Failure(f"HTTP {status}", retry, f"http_{status}")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not (
                ctype.startswith("image/") or ctype in ("application/octet-stream", "binary/octet-stream")
            ):
                raise _Failure(f"not an image (Content-Type {ctype})", False, "not_image")
            try:
                announced = int(resp.headers.get("Content-Length", ""))
            except ValueError:
                announced = -1
            if announced > self.max_bytes:
                raise _Failure(
                    f"image larger than {self.max_bytes} bytes (Content-Length {announced})",
                    False,
                    "too_large",
                )
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-", suffix=".tmp")
            try:
                size = 0
                with os.fdopen(fd, "wb") as out:
                    # urllib3 directly (requests' iter_content hides short reads in some versions)
                    for chunk in resp.raw.stream(64 * 1024, decode_content=True):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise _Failure(f"image larger than {self.max_bytes} bytes", False, "too_large")
                        out.write(chunk)
                if size == 0:
                    raise _Failure("empty response body", True, "empty")
                encoding = resp.headers.get("Content-Encoding", "identity").lower()
                if announced >= 0 and encoding in ("", "identity") and size < announced:
                    raise _Failure(f"truncated body ({size} of {announced} bytes)", True, "truncated")
                if self.check_content:
                    check_image_file(tmp, self.max_pixels)
                os.replace(tmp, target)
            except _Failure:
                raise
            except requests.Timeout as exc:
                raise _Failure(f"timeout: {exc}", True, "timeout") from None
            except Exception as exc:  # urllib3 read errors: timeout, short read (truncated), reset
                name = type(exc).__name__
                text = f"{name}: {exc}"
                if "timeout" in text.lower() or "timed out" in text.lower():
                    raise _Failure(f"timeout: {exc}", True, "timeout") from None
                if "IncompleteRead" in text or "ProtocolError" in name or "incomplete" in text.lower():
                    raise _Failure(f"truncated body ({text})", True, "truncated") from None
                raise _Failure(text, True, "connection") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)


def localize_images(products: pd.DataFrame, downloader: ImageDownloader) -> pd.DataFrame:
    """A copy of `products` whose URL images are replaced by cached local paths ("" on failure).

    Local paths and "" are kept as they are. The counts are returned in
    `result.attrs["image_counts"]`: urls, downloaded, cached, failed, local, none, and
    `result.attrs["image_failures"]`: failure counts by reason code.
    """
    out = products.copy()
    images = out["image"].fillna("").astype(str).tolist()
    urls = {str(pid): img for pid, img in zip(out["product_id"], images) if is_url(img)}
    fetched = downloader.fetch(urls) if urls else FetchResult()
    new_images = [
        (str(fetched.paths[str(pid)].resolve()) if str(pid) in fetched.paths else "") if is_url(img) else img
        for pid, img in zip(out["product_id"], images)
    ]
    out["image"] = pd.Series(new_images, index=out.index, dtype="str")
    n_none = sum(1 for img in images if not img)
    counts = {
        "urls": len(urls),
        "downloaded": fetched.downloaded,
        "cached": fetched.cached,
        "failed": len(fetched.failures),
        "local": int(len(out) - len(urls) - n_none),
        "none": int(n_none),
    }
    out.attrs["image_counts"] = counts
    out.attrs["image_failures"] = fetched.by_reason()
    out.attrs["image_fetch_seconds"] = round(fetched.seconds, 2)
    log.info("localize_images: %s", counts)
    return out


def fetch_images(
    products: pd.DataFrame, cache_dir: str | Path, progress: bool = True, **downloader_kw
) -> tuple[pd.DataFrame, dict]:
    """Localise every URL image of `products` into `cache_dir/images/` (see `ImageDownloader`).

    Returns (products with local paths, "" where the photo failed; report). The report is what
    training writes into the manifest's `images` entry: `urls`, `fetched` (downloaded now),
    `cached` (already there), `failed`, `failed_by_reason` ({code: count}), `local` (local paths
    given by the data), `none` (no image), `seconds`. A failed photo is a missing modality.
    """
    downloader = ImageDownloader(Path(cache_dir) / IMAGE_CACHE_SUBDIR, progress=progress, **downloader_kw)
    out = localize_images(products, downloader)
    c = out.attrs["image_counts"]
    report = {
        "urls": c["urls"],
        "fetched": c["downloaded"],
        "cached": c["cached"],
        "failed": c["failed"],
        "failed_by_reason": out.attrs["image_failures"],
        "local": c["local"],
        "none": c["none"],
        "seconds": out.attrs["image_fetch_seconds"],
    }
    if c["urls"]:
        log.info(
            "fetch images: %d URL(s): %d fetched, %d cached, %d failed %s in %.1fs",
            c["urls"],
            c["downloaded"],
            c["cached"],
            c["failed"],
            report["failed_by_reason"] or "",
            report["seconds"],
        )
    return out, report
