"""ml.data.images: the downloader against a local HTTP server started here (no internet needed)."""
from __future__ import annotations

import collections
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from ml.data.images import FetchResult, ImageDownloader, localize_images

JPEG = b"\xff\xd8\xff\xe0" + b"fake-jpeg-body" * 10


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


class _Handler(BaseHTTPRequestHandler):
    state: _State  # set per server

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, path: str, n: int) -> tuple[int, bytes, str]:
        """(status, body, content type) for `path`, requested for the `n`th time."""
        st = self.server.state  # type: ignore[attr-defined]
        if path.startswith("/ok/"):
            return 200, JPEG + path.encode(), "image/jpeg"
        if path.startswith("/missing"):
            return 404, b"not found", "text/plain"
        if path.startswith("/flaky"):
            return (503, b"busy", "text/plain") if n <= 2 else (200, JPEG, "image/jpeg")
        if path.startswith("/slow"):
            st.release.wait(30)
            return 200, JPEG, "image/jpeg"
        if path.startswith("/html"):
            return 200, b"<html>login</html>", "text/html; charset=utf-8"
        if path.startswith("/busy/"):
            try:
                st.busy.wait()
            except threading.BrokenBarrierError:
                return 503, b"too few requests in flight", "text/plain"
            time.sleep(0.1)  # stay in flight: a client running more than the limit shows up here
            return 200, JPEG, "image/jpeg"
        return 404, b"", "text/plain"

    def do_GET(self):
        st = self.server.state  # type: ignore[attr-defined]
        path = self.path
        with st.lock:
            st.requests[path] += 1
            n = st.requests[path]
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
        try:
            status, body, ctype = self._answer(path, n)
        finally:
            with st.lock:  # no longer in flight once the answer is decided (before the client has it)
                st.inflight -= 1
        try:
            self._send(status, body, ctype)
            with st.lock:
                st.answered[path] += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@pytest.fixture
def server():
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
    assert res.failures == {}
    assert set(res.paths) == {"P1", "P2", "P3"}
    assert res.paths["P1"] == res.paths["P2"]  # same URL -> one file, one request
    assert st.requests["/ok/a.jpg?size=large"] == 1
    assert res.paths["P1"].read_bytes() == JPEG + b"/ok/a.jpg?size=large"
    assert res.paths["P1"].suffix == ".jpg" and res.paths["P3"].suffix == ".png"  # extension kept
    assert res.paths["P1"].parent == tmp_path / "cache"
    assert res.downloaded == 3 and res.cached == 0
    # Nothing but the finished files in the cache (temp files were renamed or removed).
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted({res.paths["P1"].name, res.paths["P3"].name})

    # A new downloader over the same cache: no request at all.
    again = _dl(tmp_path).fetch({"X": url})
    assert again.paths == {"X": res.paths["P1"]} and again.failures == {}
    assert again.cached == 1 and again.downloaded == 0
    assert st.requests["/ok/a.jpg?size=large"] == 1


def test_404_is_a_failure_without_retry(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=3).fetch({"gone": f"{base}/missing.jpg", "ok": f"{base}/ok/c.jpg"})
    assert set(res.paths) == {"ok"}
    assert "404" in res.failures["gone"]
    assert st.requests["/missing.jpg"] == 1


def test_flaky_endpoint_is_retried(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=3).fetch({"f": f"{base}/flaky.jpg"})
    assert res.failures == {}
    assert res.paths["f"].read_bytes() == JPEG
    assert st.requests["/flaky.jpg"] == 3  # 503, 503, 200


def test_retries_exhausted_is_a_failure(tmp_path, server):
    base, st = server
    res = _dl(tmp_path, retries=1).fetch({"f": f"{base}/flaky.jpg"})
    assert "503" in res.failures["f"] and "2 attempts" in res.failures["f"]
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
    assert st.requests["/slow.jpg"] == 2  # a timeout is retried


def test_bad_urls_and_non_images_are_failures(tmp_path, server):
    base, _ = server
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    res = _dl(tmp_path, retries=1).fetch({
        "html": f"{base}/html/page",
        "dead": f"http://127.0.0.1:{dead}/x.jpg",
        "ftp": "ftp://example.com/x.jpg",
        "empty": "",
    })
    assert res.paths == {}
    assert set(res.failures) == {"html", "dead", "ftp", "empty"}
    assert "not an image" in res.failures["html"]


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
    products = pd.DataFrame({
        "product_id": ["A", "B", "C", "D"],
        "title": ["a", "b", "c", "d"],
        "image": [f"{base}/ok/a.jpg", f"{base}/missing.jpg", str(local), ""],
    })
    out = localize_images(products, _dl(tmp_path))
    assert list(out.columns) == list(products.columns)
    assert products["image"].iloc[0].startswith("http")  # input untouched
    img = dict(zip(out["product_id"], out["image"]))
    assert img["A"].startswith(str(tmp_path / "cache")) and img["A"].endswith(".jpg")
    assert img["B"] == "" and img["C"] == str(local) and img["D"] == ""
    assert out.attrs["image_counts"] == {"urls": 2, "downloaded": 1, "cached": 0, "failed": 1, "local": 1, "none": 1}
    again = localize_images(products, _dl(tmp_path))
    assert again.attrs["image_counts"]["cached"] == 1
