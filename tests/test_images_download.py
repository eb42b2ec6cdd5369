"""ml.data.images: the downloader against a local HTTP server started here (no internet needed).

The server answers with the real product photos in ../shared/data/fashion-product-images-small-subset
(224x224 JPEGs), and with every kind of failure a photo host produces: 404s, 503s, answers slower
than the client's timeout, bodies cut short (fewer bytes than Content-Length, or a JPEG whose data
ends early), HTML where a photo should be (with an honest or a lying Content-Type), and images too
large in bytes or in pixels.
"""

from __future__ import annotations

import collections
import functools
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ml.config import REPO_ROOT
from ml.data.images import FetchResult, ImageDownloader, fetch_images, localize_images

PHOTOS_DIR = REPO_ROOT.parent / "shared" / "data" / "fashion-product-images-small-subset" / "images"


@functools.cache
def _photo_files() -> tuple[Path, ...]:
    return tuple(sorted(PHOTOS_DIR.glob("*.jpg")))


def _photos() -> tuple[Path, ...]:
    photos = _photo_files()
    if len(photos) < 40:
        pytest.skip(f"real photos not present: {PHOTOS_DIR}")
    return photos


@functools.cache
def _photo_bytes(name: str) -> bytes:
    """A real photo chosen by `name` (stable), as served."""
    photos = _photos()
    return photos[sum(name.encode()) % len(photos)].read_bytes()


@functools.cache
def _huge_png() -> bytes:
    """A 3,000 x 3,000 PNG: a few KB on the wire, 9 Mpx once decoded."""
    buf = io.BytesIO()
    Image.new("L", (3000, 3000), 255).save(buf, format="PNG")
    return buf.getvalue()


BUSY_CONCURRENCY = 3  # /busy/ answers only once this many requests are in flight together


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.inflight = 0
        self.max_inflight = 0
        # /slow answers only after the test sets this (or after 30 s, which fails the test)
        self.release = threading.Event()
        # /busy/ requests wait for each other in groups: answered only with that much concurrency
        self.busy = threading.Barrier(BUSY_CONCURRENCY, timeout=20)
        self.files_dir: Path | None = None  # /file/<name> serves files from here


class _Handler(BaseHTTPRequestHandler):
    state: _State  # set per server

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(
        self, status: int, body: bytes = b"", ctype: str = "image/jpeg", length: int | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        if length is not None and length != len(body):
            self.close_connection = True  # a body cut short: the connection ends mid-body

    def _answer(self, path: str, n: int) -> tuple[int, bytes, str, int | None]:
        """(status, body, content type, announced length or None) for `path`, requested the `n`th time."""
        st = self.server.state  # type: ignore[attr-defined]
        name = path.split("?")[0]
        if path.startswith("/ok/"):
            return 200, _photo_bytes(name), "image/jpeg", None
        if path.startswith("/file/") and st.files_dir is not None:
            f = st.files_dir / Path(name).name
            if f.is_file():
                return 200, f.read_bytes(), "image/png" if f.suffix == ".png" else "image/jpeg", None
            return 404, b"", "text/plain", None
        if path.startswith("/missing"):
            return 404, b"not found", "text/plain", None
        if path.startswith("/flaky"):
            return (
                (503, b"busy", "text/plain", None)
                if n <= 2
                else (200, _photo_bytes(name), "image/jpeg", None)
            )
        if path.startswith("/slow"):
            st.release.wait(30)
            return 200, _photo_bytes(name), "image/jpeg", None
        if path.startswith("/html"):
            return 200, b"<html>login</html>", "text/html; charset=utf-8", None
        if path.startswith("/liar"):  # says image/jpeg, sends a web page
            return 200, b"<!doctype html><html>captcha</html>" * 20, "image/jpeg", None
        if path.startswith("/short"):  # announces the whole photo, sends half of it, hangs up
            body = _photo_bytes(name)
            return 200, body[: len(body) // 2], "image/jpeg", len(body)
        if path.startswith("/cut"):  # a JPEG file that itself ends early (Content-Length is right)
            body = _photo_bytes(name)
            return 200, body[: len(body) // 2], "image/jpeg", None
        if path.startswith("/huge"):
            return 200, _huge_png(), "image/png", None
        if path.startswith("/busy/"):
            try:
                st.busy.wait()
            except threading.BrokenBarrierError:
                return 503, b"too few requests in flight", "text/plain", None
            time.sleep(0.1)  # stay in flight: a client running more than the limit shows up here
            return 200, _photo_bytes(name), "image/jpeg", None
        return 404, b"", "text/plain", None

    def do_GET(self):
        st = self.server.state  # type: ignore[attr-defined]
        path = self.path
        with st.lock:
            st.requests[path] += 1
            n = st.requests[path]
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
        try:
            status, body, ctype, length = self._answer(path, n)
        finally:
            with st.lock:  # no longer in flight once the answer is decided (before the client has it)
                st.inflight -= 1
        try:
            self._send(status, body, ctype, length)
            with st.lock:
                st.answered[path] += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def server():
    _photos()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, httpd.state
    finally:
        httpd.state.release.set()  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()


def _dl(tmp_path, **kw) -> ImageDownloader:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("retries", 3)
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("concurrency", 4)
    kw.setdefault("progress", False)
    return ImageDownloader(tmp_path / "cache", **kw)


def test_success_and_cache_hit(tmp_path, server):
    base, st = server
    url = f"{base}/ok/a.jpg?size=large"
    res = _dl(tmp_path).fetch({"P1": url, "P2": url, "P3": f"{base}/ok/b.png"})
    assert isinstance(res, FetchResult)
    assert res.failures == {} and res.reasons == {}
    assert set(res.paths) == {"P1", "P2", "P3"}
    assert res.paths["P1"] == res.paths["P2"]  # same URL -> one file, one request
    assert st.requests["/ok/a.jpg?size=large"] == 1
    assert res.paths["P1"].read_bytes() == _photo_bytes("/ok/a.jpg")
    with Image.open(res.paths["P1"]) as im:
        assert im.size == (224, 224)
    assert res.paths["P1"].suffix == ".jpg" and res.paths["P3"].suffix == ".png"  # extension kept
    assert res.paths["P1"].parent == tmp_path / "cache"
    assert res.downloaded == 3 and res.cached == 0
    # Nothing but the finished files in the cache (temp files were renamed or removed).
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        {res.paths["P1"].name, res.paths["P3"].name}
    )

    # A new downloader over the same cache: no request at all.
    again = _dl(tmp_path).fetch({"X": url})
    assert again.paths == {"X": res.paths["P1"]} and again.failures == {}
    assert again.cached == 1 and again.downloaded == 0
    assert st.requests["/ok/a.jpg?size=large"] == 1


def test_404_is_a_failure_without_retry(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=3).fetch({"gone": f"{base}/missing.jpg", "ok": f"{base}/ok/c.jpg"})
    assert set(res.paths) == {"ok"}
    assert "404" in res.failures["gone"] and res.reasons == {"gone": "http_404"}
    assert st.requests["/missing.jpg"] == 1


def test_flaky_endpoint_is_retried(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=3).fetch({"f": f"{base}/flaky.jpg"})
    assert res.failures == {}
    assert res.paths["f"].read_bytes() == _photo_bytes("/flaky.jpg")
    assert st.requests["/flaky.jpg"] == 3  # 503, 503, 200


def test_backoff_grows_between_retries(tmp_path, server, monkeypatch):
    import ml.data.images as images

    sleeps: list[float] = []
    monkeypatch.setattr(images.time, "sleep", sleeps.append)
    base, st = server
    res = _dl(tmp_path, retries=3, backoff_s=0.5).fetch({"f": f"{base}/flaky.jpg"})
    assert res.failures == {} and sleeps == [0.5, 1.0]


def test_retries_exhausted_is_a_failure(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=1).fetch({"f": f"{base}/flaky.jpg"})
    assert "503" in res.failures["f"] and "2 attempts" in res.failures["f"]
    assert res.reasons["f"] == "http_503"
    assert st.requests["/flaky.jpg"] == 2
    assert not list((tmp_path / "cache").iterdir())  # no partial file


def test_slow_endpoint_times_out(tmp_path, server):
    """The server answers /slow only once the test releases it: fetch must give up first."""
    base, st = server
    res = _dl(tmp_path, timeout_s=0.3, retries=1).fetch({"s": f"{base}/slow.jpg"})
    assert st.answered["/slow.jpg"] == 0  # fetch returned before any answer was sent
    st.release.set()
    assert res.paths == {}
    assert "timeout" in res.failures["s"].lower() or "timed out" in res.failures["s"].lower()
    assert res.reasons["s"] == "timeout"
    assert st.requests["/slow.jpg"] == 2  # a timeout is retried


def test_bad_urls_and_non_images_are_failures(tmp_path, server):
    base, _ = server
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    res = _dl(tmp_path, retries=1).fetch(
        {
            "html": f"{base}/html/page",
            "liar": f"{base}/liar.jpg",
            "dead": f"http://127.0.0.1:{dead}/x.jpg",
            "ftp": "ftp://example.com/x.jpg",
            "empty": "",
        }
    )
    assert res.paths == {}
    assert set(res.failures) == {"html", "liar", "dead", "ftp", "empty"}
    assert "not an image" in res.failures["html"] and "not an image" in res.failures["liar"]
    assert res.reasons == {
        "html": "not_image",
        "liar": "not_image",
        "dead": "connection",
        "ftp": "unsupported_url",
        "empty": "no_url",
    }
    assert not list((tmp_path / "cache").glob("*"))  # nothing kept, no temp files


def test_truncated_bodies_are_retried_then_failures(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=1).fetch(
        {"short": f"{base}/short.jpg", "cut": f"{base}/cut.jpg", "ok": f"{base}/ok/d.jpg"}
    )
    assert set(res.paths) == {"ok"}
    assert res.reasons == {"short": "truncated", "cut": "truncated"}
    assert st.requests["/short.jpg"] == 2 and st.requests["/cut.jpg"] == 2  # retried once each
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [res.paths["ok"].name]


def test_size_caps(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, max_pixels=1_000_000).fetch({"huge": f"{base}/huge.png", "ok": f"{base}/ok/e.jpg"})
    assert set(res.paths) == {"ok"} and res.reasons == {"huge": "too_many_pixels"}
    assert "3000x3000" in res.failures["huge"]
    res = _dl(tmp_path, max_bytes=1000).fetch({"big": f"{base}/ok/f.jpg"})
    assert res.reasons == {"big": "too_large"} and res.paths == {}
    assert st.requests["/huge.png"] == 1 and st.requests["/ok/f.jpg"] == 1  # neither is retried


def test_bounded_concurrency(tmp_path, server):
    base, st = server
    urls = {f"p{i}": f"{base}/busy/{i}.jpg" for i in range(12)}
    res = _dl(tmp_path, concurrency=BUSY_CONCURRENCY).fetch(urls)
    # every /busy/ answer needed BUSY_CONCURRENCY requests in flight together (a barrier), and
    # while each group was held no further request arrived
    assert res.failures == {} and len(res.paths) == 12
    assert st.max_inflight == BUSY_CONCURRENCY
    assert sum(st.requests.values()) == 12  # no retries were needed


def test_localize_images(tmp_path, server):
    base, _ = server
    local = tmp_path / "local.png"
    local.write_bytes(b"\x89PNG")
    products = pd.DataFrame(
        {
            "product_id": ["A", "B", "C", "D"],
            "title": ["a", "b", "c", "d"],
            "image": [f"{base}/ok/a.jpg", f"{base}/missing.jpg", str(local), ""],
        }
    )
    out = localize_images(products, _dl(tmp_path))
    assert list(out.columns) == list(products.columns)
    assert products["image"].iloc[0].startswith("http")  # input untouched
    img = dict(zip(out["product_id"], out["image"]))
    assert img["A"].startswith(str(tmp_path / "cache")) and img["A"].endswith(".jpg")
    assert img["B"] == "" and img["C"] == str(local) and img["D"] == ""
    assert out.attrs["image_counts"] == {
        "urls": 2,
        "downloaded": 1,
        "cached": 0,
        "failed": 1,
        "local": 1,
        "none": 1,
    }
    assert out.attrs["image_failures"] == {"http_404": 1}
    again = localize_images(products, _dl(tmp_path))
    assert again.attrs["image_counts"]["cached"] == 1


# What the server is told to fail, per product, in the catalog tests below (and test_cli's).
FAULTS = {"missing": 5, "short": 3, "cut": 2, "liar": 4, "html": 2, "huge": 1, "slow": 2}
FAULT_REASONS = {
    "missing": "http_404",
    "short": "truncated",
    "cut": "truncated",
    "liar": "not_image",
    "html": "not_image",
    "huge": "too_many_pixels",
    "slow": "timeout",
}


def catalog(base: str, n_ok: int = 30) -> pd.DataFrame:
    """Products whose photo URLs point at the test server: n_ok real photos, FAULTS failures, 2 without."""
    rows = [(f"OK{k:03d}", f"{base}/ok/{k}.jpg") for k in range(n_ok)]
    for kind, n in FAULTS.items():
        rows += [(f"{kind.upper()}{k}", f"{base}/{kind}/{k}.jpg") for k in range(n)]
    rows += [("NOPHOTO1", ""), ("NOPHOTO2", "")]
    return pd.DataFrame(
        {
            "product_id": [r[0] for r in rows],
            "title": [f"product {r[0]}" for r in rows],
            "text": "",
            "image": [r[1] for r in rows],
        }
    )


def expected_failures() -> dict[str, int]:
    out: collections.Counter[str] = collections.Counter()
    for kind, n in FAULTS.items():
        out[FAULT_REASONS[kind]] += n
    return dict(out)


def test_failure_report_counts_what_the_server_failed_and_resumes(tmp_path, server):
    base, st = server
    products = catalog(base)
    # only /slow/ never answers in time (it waits for the release below); the rest answer at once
    kw = dict(timeout_s=1.5, retries=1, backoff_s=0.01, concurrency=8, progress=False, max_pixels=1_000_000)
    out, report = fetch_images(products, tmp_path, **kw)
    assert report["failed_by_reason"] == expected_failures()
    n_failed = sum(FAULTS.values())
    assert report["urls"] == 30 + n_failed and report["fetched"] == 30 and report["cached"] == 0
    assert report["failed"] == n_failed and report["none"] == 2 and report["local"] == 0
    img = dict(zip(out["product_id"], out["image"]))
    assert all(Path(img[f"OK{k:03d}"]).is_file() for k in range(30))
    assert all(img[pid] == "" for pid in img if not pid.startswith("OK"))  # a failure is a missing photo
    assert (tmp_path / "images").is_dir()

    # Resumable: a second run asks only for what is still missing (the failed ones), nothing twice.
    st.release.set()  # the slow photos now answer at once
    before = sum(st.requests[p] for p in st.requests if p.startswith("/ok/"))
    out2, report2 = fetch_images(products, tmp_path, **kw)
    assert sum(st.requests[p] for p in st.requests if p.startswith("/ok/")) == before
    assert report2["cached"] == 30 and report2["fetched"] == FAULTS["slow"]
    failed2 = expected_failures()
    del failed2["timeout"]
    assert report2["failed_by_reason"] == failed2


@pytest.mark.slow
def test_training_fetches_photos_and_reports_failures_in_the_manifest(tmp_path, server, monkeypatch):
    """`train` on a world whose photos are URLs: the failed ones are missing photos, the counts by
    reason in the manifest are what the server was told to fail, and a second run fetches nothing."""
    from dataclasses import replace

    import ml.data.images as images
    from demo import generate_world, with_image_urls
    from ml.config import Settings
    from ml.train import TrainConfig, train_model

    base, st = server
    generate_world(tmp_path / "w", n_customers=30, n_products=24, seed=5)
    st.files_dir = tmp_path / "w" / "images"
    faults = {"missing": 2, "short": 1, "liar": 1, "html": 1, "huge": 1}  # the 6 first products
    plan = [kind for kind, n in faults.items() for _ in range(n)]
    asins: dict[str, int] = {}  # product -> its rank in the meta file

    def url_for(asin: str, name: str) -> str:
        k = asins.setdefault(asin, len(asins))
        return f"{base}/{plan[k]}/{k}.jpg" if k < len(plan) else f"{base}/file/{name}"

    data = with_image_urls(tmp_path / "w", tmp_path / "urls", base, url_for)
    assert not (data / "images").exists()
    settings = replace(Settings.from_env(), cache_dir=tmp_path / "cache")
    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", 1_000_000)  # the 3,000 x 3,000 /huge photo is huge here
    cfg = TrainConfig(epochs=1, use_text=False, verbose=0, progress=False)
    m1 = train_model(data, tmp_path / "m1", cfg, settings=settings)
    want = {"http_404": 2, "truncated": 1, "not_image": 2, "too_many_pixels": 1}
    assert m1["images"] == {
        "with_photo": 24 - 6,
        "urls": 24,
        "fetched": 18,
        "cached": 0,
        "failed": 6,
        "failed_by_reason": want,
        "local": 0,
        "none": 0,
        "seconds": m1["images"]["seconds"],
    }
    # what a second `train` would find: the 18 photos cached, the 6 failures asked again (and failing)
    from ml.data import load_dataset

    _, again = images.fetch_images(load_dataset(data).products, settings.cache_dir, progress=False)
    assert again["fetched"] == 0 and again["cached"] == 18 and again["failed_by_reason"] == want
    assert set(m1["stages_s"]) == {
        "load",
        "encoders",
        "fetch",
        "embed_images",
        "embed_texts",
        "fit",
        "fit_parts",
    }
    assert set(m1["stages_s"]["fit_parts"]) == {"rows", "network", "validation", "ranking"}
    assert m1["encoders"].keys() == {"image"}
    # products.json keeps the source URLs (what a client can show), not the cache paths
    import json

    shown = json.loads((tmp_path / "m1" / "products.json").read_text())
    assert all(p["image"].startswith(base) for p in shown)


def test_a_set_stop_event_cancels_the_downloads_not_yet_started(tmp_path, monkeypatch):
    """What a training run whose text stage failed does to the fetch running beside it: every
    download not yet started fails at once as "cancelled", without a request."""
    import threading

    stop = threading.Event()
    stop.set()
    dl = ImageDownloader(tmp_path, progress=False, stop=stop, retries=3, backoff_s=5.0)
    monkeypatch.setattr(dl, "_get_to", lambda *a: pytest.fail("a cancelled download made a request"))
    t0 = time.perf_counter()
    result = dl.fetch({f"P{k}": f"http://127.0.0.1:9/{k}.jpg" for k in range(5)})
    assert time.perf_counter() - t0 < 2.0
    assert result.by_reason() == {"cancelled": 5} and not result.paths
