"""Download product images into a local cache, politely and without ever raising per image.

`ImageDownloader.fetch({product_id: url})` -> `FetchResult(paths, failures)`:
- the cache file is named by a hash of the URL (keeping the URL's extension), so the same URL is
  downloaded once, and a cached file is reused without any request;
- writes are atomic (temp file in the cache folder, then rename), so a crash leaves no partial image;
- at most `concurrency` downloads run at once (a thread pool);
- errors and 5xx/408/429 answers are retried `retries` times with exponential backoff
  (`backoff_s * 2**attempt`); other 4xx (404...) are not retried;
- failures are recorded as product_id -> reason.

`localize_images(products, downloader)` replaces URL images in a products frame with the cached
local paths ("" where the download failed).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import pandas as pd
import requests
from tqdm.auto import tqdm

log = logging.getLogger("ml.data.images")

_EXT_RE = re.compile(r"^\.[a-z0-9]{1,5}$")
_RETRY_STATUS = {408, 429}
_USER_AGENT = "fashion-recsys-image-fetcher/1.0"


@dataclass
class FetchResult:
    """paths: id -> local file (downloaded or cached); failures: id -> reason."""

    paths: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    downloaded: int = 0  # ids whose image was fetched over the network in this call
    cached: int = 0  # ids whose image was already in the cache (no request)


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def is_url(value: str) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


class ImageDownloader:
    def __init__(
        self,
        cache_dir: str | Path,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        concurrency: int = 8,
        progress: bool = True,
        max_bytes: int = 20 * 1024 * 1024,
    ):
        self.cache_dir = Path(cache_dir)
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = max(0.0, float(backoff_s))
        self.concurrency = max(1, int(concurrency))
        self.progress = progress
        self.max_bytes = int(max_bytes)
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
        result = FetchResult()
        by_url: dict[str, list[str]] = {}
        for key, url in urls.items():
            if not isinstance(url, str) or not url.strip():
                result.failures[key] = "no URL"
            elif not is_url(url.strip()):
                result.failures[key] = f"unsupported URL (http/https only): {url[:100]}"
            else:
                by_url.setdefault(url.strip(), []).append(key)
        if not by_url:
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
        if not todo:
            return result

        bar = tqdm(total=len(todo), desc="images", unit="img", disable=not self.progress, leave=False)
        try:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo)),
                                    thread_name_prefix="image-fetch") as pool:
                futures = {pool.submit(self._download, url): url for url in todo}
                for fut in as_completed(futures):
                    url = futures[fut]
                    try:
                        path = fut.result()
                    except _Failure as exc:
                        for k in by_url[url]:
                            result.failures[k] = exc.reason
                    except Exception as exc:  # never raise for one image
                        for k in by_url[url]:
                            result.failures[k] = f"{type(exc).__name__}: {exc}"
                    else:
                        result.downloaded += len(by_url[url])
                        for k in by_url[url]:
                            result.paths[k] = path
                    bar.update(1)
        finally:
            bar.close()
        if result.failures:
            log.warning("image download: %d of %d id(s) failed (e.g. %s)", len(result.failures), len(urls),
                        next(iter(result.failures.items())))
        return result

    # ----------------------------------------------------------------- private

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = _USER_AGENT
            self._local.session = s
        return s

    def _download(self, url: str) -> Path:
        target = self.cache_path(url)
        attempt = 0
        while True:
            try:
                self._get_to(url, target)
                return target
            except _Failure as exc:
                if not exc.retry or attempt >= self.retries:
                    if attempt:
                        raise _Failure(f"{exc.reason} (after {attempt + 1} attempts)", False) from None
                    raise
            time.sleep(self.backoff_s * (2 ** attempt))
            attempt += 1

    def _get_to(self, url: str, target: Path) -> None:
        try:
            resp = self._session().get(url, timeout=self.timeout_s, stream=True)
        except requests.Timeout as exc:
            raise _Failure(f"timeout: {exc}", True) from None
        except requests.RequestException as exc:
            raise _Failure(f"{type(exc).__name__}: {exc}", True) from None
        with resp:
            status = resp.status_code
            if status != 200:
                retry = status >= 500 or status in _RETRY_STATUS
                raise _Failure(f"HTTP {status}", retry)
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise _Failure(f"not an image (Content-Type {ctype})", False)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-", suffix=".tmp")
            try:
                size = 0
                with os.fdopen(fd, "wb") as out:
                    for chunk in resp.iter_content(chunk_size=64 * 1024):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise _Failure(f"image larger than {self.max_bytes} bytes", False)
                        out.write(chunk)
                if size == 0:
                    raise _Failure("empty response body", True)
                os.replace(tmp, target)
            except requests.Timeout as exc:
                raise _Failure(f"timeout: {exc}", True) from None
            except requests.RequestException as exc:
                raise _Failure(f"{type(exc).__name__}: {exc}", True) from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)


def localize_images(products: pd.DataFrame, downloader: ImageDownloader) -> pd.DataFrame:
    """A copy of `products` whose URL images are replaced by cached local paths ("" on failure).

    Local paths and "" are kept as they are. The counts are returned in
    `result.attrs["image_counts"]`: urls, downloaded, cached, failed, local, none.
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
    log.info("localize_images: %s", counts)
    return out
