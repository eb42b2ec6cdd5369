"""`python -m bench load` (bench/load.py), small: how answers are counted as errors (a fake server
that answers 500 or drops the connection must show up as errors, by status), and 4 clients for 3 s
against the real service (gunicorn started by the bench's own `serve`, the session's Redis and
prefork worker behind it): zero errors, every request counted (against gunicorn's access log), the
percentiles in order. The 50-client, 60-second figures are in docs/SERVICE.md ("Load")."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections import Counter

import pytest

from bench import load

# ---------------------------------------------------------------- counting (no service)


def test_classify_counts_what_a_healthy_service_does_not_answer():
    items = {"items": [{}] * load.TOP}
    assert load.classify("recommendation", 200, items) is None
    assert load.classify("post_job", 202, {"job_id": "x"}) is None
    assert load.classify("get_job", 200, {"state": "queued"}) is None
    assert load.classify("get_job", 200, {"state": "succeeded", "result": items}) is None

    assert load.classify("recommendation", 500, {"error": "boom"}) == "500"
    assert load.classify("recommendation", 503, None) == "503"
    assert load.classify("recommendation", 202, {"job_id": "x"}) == "202"  # the sync wait ran out
    assert load.classify("post_job", 503, {}) == "503"
    assert load.classify("get_job", 404, {}) == "404"
    assert (
        load.classify("recommendation", None, None, ConnectionResetError())
        == "connection:ConnectionResetError"
    )
    assert load.classify("get_job", None, None, TimeoutError()) == "connection:TimeoutError"
    assert load.classify("recommendation", 200, {"items": []}) == "bad_body"
    assert load.classify("recommendation", 200, None) == "bad_body"
    assert load.classify("post_job", 202, {}) == "bad_body"
    assert load.classify("get_job", 200, {"state": "failed", "error_code": "internal"}) == "job_failed"
    assert load.classify("get_job", 200, {"state": "succeeded", "result": {"items": []}}) == "bad_body"


class _Broken(http.server.BaseHTTPRequestHandler):
    """Answers 500 to /recommendation, drops the connection on POST /jobs without answering."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"error": "boom", "status": 500}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.close_connection = True  # no answer at all


def test_errors_from_a_broken_server_are_all_counted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = load.run_clients(
            f"http://127.0.0.1:{server.server_port}", ["a", "b"], clients=3, seconds=0.5, job_share=0.5
        )
    finally:
        server.shutdown()
        server.server_close()
    by_kind = out["requests"]["by_kind"]
    errors = out["errors"]["by_kind_status"]
    assert by_kind["recommendation"] > 0 and by_kind["post_job"] > 0 and by_kind["get_job"] == 0
    assert errors["recommendation:500"] == by_kind["recommendation"]
    assert errors["post_job:connection:RemoteDisconnected"] == by_kind["post_job"]
    assert out["errors"]["total"] == out["requests"]["total"]
    assert out["jobs"] == {"succeeded": 0, "abandoned_after_an_error": by_kind["post_job"]}


def test_summary_counts_and_orders_percentiles():
    tally = load.Tally()
    for k in range(100):
        tally.add("recommendation", None if k % 10 else "503", (k + 1) / 1000)
    tally.add("get_job", "job_timeout", 0.0)  # a verdict, not a request
    out = load.summarize([tally, load.Tally()], wall_s=2.0)
    assert out["requests"] == {"total": 100, "by_kind": {"recommendation": 100, "post_job": 0, "get_job": 0}}
    assert out["errors"] == {
        "total": 11,
        "by_kind_status": {"get_job:job_timeout": 1, "recommendation:503": 10},
    }
    assert out["throughput_req_s"] == 50.0
    lat = out["latency_ms"]["recommendation"]
    assert lat["n"] == 100 and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"] == 100.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--clients", "0"], "--clients: must be at least 1"),
        (["--seconds", "abc"], "expected a number of seconds"),
        (["--seconds", "-1"], "must be above 0"),
        (["--workers", "1.5"], "expected a whole number"),
        (["--job-share", "2"], "--job-share: must be at most 1"),
        (["--job-share", "nan"], "expected a finite number"),
    ],
)
def test_bad_options_are_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        load.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- the real service

ACCESS = re.compile(r'"(GET /recommendation\?|POST /jobs |GET /jobs/)')
ACCESS_KIND = {"GET /recommendation?": "recommendation", "POST /jobs ": "post_job", "GET /jobs/": "get_job"}


@pytest.mark.service
def test_four_clients_for_three_seconds(tmp_path, settings, worker, models_dir, known_customers):
    with load.serve(models_dir, tmp_path, workers=0, base=settings, redis_url=settings.redis_url) as (
        _,
        url,
        _stack,
    ):
        out = load.run_clients(url, known_customers, clients=4, seconds=3.0, job_share=0.4, poll_s=0.02)
    assert out["errors"] == {"total": 0, "by_kind_status": {}}, out
    by_kind = out["requests"]["by_kind"]
    assert all(by_kind[kind] > 0 for kind in load.KINDS), by_kind
    assert out["requests"]["total"] == sum(by_kind.values())
    assert out["jobs"]["succeeded"] == by_kind["post_job"] and out["jobs"]["abandoned_after_an_error"] == 0
    # every request the clients made is counted, and is one gunicorn answered
    served = Counter(ACCESS_KIND[m] for m in ACCESS.findall((tmp_path / "logs" / "web.log").read_text()))
    assert dict(served) == by_kind
    for kind in (*load.KINDS, "job_end_to_end"):
        lat = out["latency_ms"][kind]
        assert lat["n"] == (by_kind.get(kind) or out["jobs"]["succeeded"])
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"], (kind, lat)
    assert out["throughput_req_s"] > 0 and out["wall_s"] >= 3.0
