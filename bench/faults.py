"""Faults at full size and bounded state: `python -m bench faults` (figures for issue 14).

Against the embedded Redis as the launcher runs it (password, append-only file, fsync always), a
real prefork worker (`tests.fault_app`: the service's app plus the holding task) and, for the Redis
crash and the 10k jobs, the web app under gunicorn:

1. `kill_child`: a job running, 100 recommendation jobs queued; kill -9 the pool child;
2. `kill_main`: the same, kill -9 the worker's main process, start a new worker;
3. `redis_crash`: POST /jobs steadily; SIGKILL Redis, POST on for 5 s, start it again;
4. `bounded`: 10,000 jobs through POST /jobs; Redis keys, keys without a TTL and used memory, and the
   worker's RSS (main process + pool child) at jobs 1,000 and 10,000.

For each fault: accepted jobs, jobs lost (not succeeded), jobs run to a result more than once (from
the worker logs), wrong results (vs the in-process recommender), recovery time. JSON to
var/bench/faults.json. The short timeouts (visibility timeout 12 s, sweep every 1 s) are the tests'.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ml.config import REPO_ROOT, Settings

SOFT_S, HARD_S, VT_S, HOLD_S = 9, 10, 12, 8.0
SUCCEEDED = re.compile(r"Task (\S+)\[([0-9a-f-]{36})\] succeeded in ")
HOLD = "tests.hold"


def _http(
    method: str, url: str, payload: dict | None = None, timeout: float = 30.0
) -> tuple[int, dict, float]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}"), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body, time.monotonic() - started
    except OSError:
        return 0, {}, time.monotonic() - started


class Bench:
    def __init__(self, tmp: Path, models: Path) -> None:
        from scripts.procs import free_port, redis_password, url_with_password
        from tasks.celery_app import make_celery

        self.tmp = tmp
        self.port = free_port()
        self.password = redis_password(tmp / "redis" / "password")
        url = url_with_password(f"redis://127.0.0.1:{self.port}/0", self.password)
        self.settings = replace(
            Settings.from_env(),
            redis_url=url,
            models_dir=models,
            var_dir=tmp,
            task_soft_time_limit_s=SOFT_S,
            task_time_limit_s=HARD_S,
            broker_visibility_timeout_s=VT_S,
            broker_restore_interval_s=1,
            web_port=free_port(),
            web_workers=1,
            web_threads=4,
        )
        self.start_redis()
        self.celery = make_celery(self.settings)
        self.workers: list = []
        self.web = None
        from ml.recommender import Recommender
        from ml.registry import ModelRegistry

        self.rec = Recommender.load(ModelRegistry(models).current_path())
        self.url = f"http://127.0.0.1:{self.settings.web_port}"

    def env(self) -> dict[str, str]:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from support import worker_env

        return worker_env(self.settings)

    def start_redis(self) -> None:
        from scripts.procs import redis_reachable, start_redis, wait_until

        self.redis = start_redis(
            self.port,
            self.tmp / "redis",
            log_file=self.tmp / "redis.log",
            password=self.password,
            appendfsync=self.settings.redis_appendfsync,
        )
        wait_until(lambda: redis_reachable(self.settings.redis_url, 0.5), 30, proc=self.redis, what="redis")

    def start_worker(self):
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from support import Worker

        worker = Worker(
            self.env(),
            self.tmp / f"worker{len(self.workers)}.log",
            f"bench{len(self.workers)}",
            app="tests.fault_app:app",
        )
        self.workers.append(worker)
        worker.wait_ready(self.celery, 600)
        return worker

    def start_web(self) -> None:
        from scripts.procs import wait_until
        from scripts.run_stack import web_command

        env = {**self.env(), "RECSYS_WEB_PORT": str(self.settings.web_port)}
        with open(self.tmp / "web.log", "ab") as out:
            self.web = subprocess.Popen(
                web_command(self.settings),
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: _http("GET", self.url + "/healthz")[0] == 200, 60, proc=self.web, what="web")

    def logs(self) -> str:
        return "".join(w.log() for w in self.workers)

    def close(self) -> None:
        from scripts.procs import stop_group

        for worker in self.workers:
            worker.stop()
        if self.web is not None:
            stop_group(self.web, timeout_s=10)
        self.celery.close()
        stop_group(self.redis, timeout_s=5)

    # ------------------------------------------------------------ helpers

    def jobs_for(self, n: int) -> list[tuple[str, int]]:
        customers = list(self.rec.customers(50)) + ["cold-start-1"]
        return [(customers[k % len(customers)], 1 + k % 10) for k in range(n)]

    def hold_running(self, then=None):
        """Send the holding job (then `then()`, e.g. queue jobs behind it) and return it once its
        first run has started."""
        from tasks import names

        res = self.celery.send_task(HOLD, args=[HOLD_S], queue=names.INFERENCE_QUEUE)
        if then is not None:
            then()
        deadline = time.monotonic() + 600
        while res.state != "STARTED":
            assert time.monotonic() < deadline, "the holding job never started"
            time.sleep(0.02)
        return res

    def wait(self, ids, timeout_s: float) -> float:
        import redis

        db = redis.Redis.from_url(self.settings.redis_url)
        pending, started = list(ids), time.monotonic()
        while pending and time.monotonic() - started < timeout_s:
            try:
                metas = db.mget([f"celery-task-meta-{i}" for i in pending])
            except redis.RedisError:
                time.sleep(0.2)
                continue
            pending = [
                i
                for i, m in zip(pending, metas)
                if m is None or json.loads(m)["status"] not in ("SUCCESS", "FAILURE")
            ]
            time.sleep(0.05)
        db.close()
        return time.monotonic() - started

    def outcome(self, jobs: dict[str, tuple[str, int]], extra_ids=()) -> dict:
        """lost (not succeeded), run more than once, wrong results."""
        lost = wrong = 0
        for job_id, (customer, top) in jobs.items():
            res = self.celery.AsyncResult(job_id)
            if res.state != "SUCCESS":
                lost += 1
                continue
            want = [x["product_id"] for x in self.rec.recommend(customer, top=top)]
            if [x["product_id"] for x in res.result["items"]] != want:
                wrong += 1
        runs = Counter(i for _, i in SUCCEEDED.findall(self.logs()))
        ids = list(jobs) + list(extra_ids)
        return {
            "accepted": len(ids),
            "lost": lost + sum(self.celery.AsyncResult(i).state != "SUCCESS" for i in extra_ids),
            "ran_more_than_once": sum(runs[i] > 1 for i in ids),
            "never_logged_succeeded": sum(runs[i] == 0 for i in ids),
            "wrong_results": wrong,
        }

    def send(self, n: int) -> dict[str, tuple[str, int]]:
        from tasks import names

        return {self.celery.send_task(names.RECOMMEND, args=[c, t]).id: (c, t) for c, t in self.jobs_for(n)}

    # ------------------------------------------------------------ scenarios

    def kill_child(self, n: int) -> dict:
        worker = self.workers[-1]
        jobs: dict = {}
        held = self.hold_running(lambda: jobs.update(self.send(n)))  # queued behind it, kill at once
        (child,) = worker.pool_children()
        os.kill(child, signal.SIGKILL)
        recovery = self.wait([held.id, *jobs], 900)
        return {
            "case": f"pool child kill -9, 1 running + {n} queued",
            **self.outcome(jobs, [held.id]),
            "held_job_runs": held.result.get("runs") if held.state == "SUCCESS" else None,
            "seconds_to_last_result": round(recovery, 1),
        }

    def kill_main(self, n: int) -> dict:
        old = self.workers[-1]
        jobs: dict = {}
        held = self.hold_running(lambda: jobs.update(self.send(n)))
        old.kill_main()
        started = time.monotonic()
        self.start_worker()
        up = time.monotonic() - started
        self.wait([held.id, *jobs], 900)
        return {
            "case": f"worker main process kill -9, 1 running + {n} queued, new worker",
            **self.outcome(jobs, [held.id]),
            "new_worker_up_s": round(up, 1),
            "seconds_to_last_result": round(time.monotonic() - started, 1),
        }

    def redis_crash(self, outage_s: float = 5.0) -> dict:
        from scripts.procs import stop_group

        jobs: dict[str, tuple[str, int]] = {}
        plan = iter(self.jobs_for(100000))

        def post() -> tuple[int, float]:
            customer, top = next(plan)
            status, body, took = _http("POST", self.url + "/jobs", {"customer_id": customer, "top": top})
            if status == 202:
                jobs[body["job_id"]] = (customer, top)
            return status, took

        held = self.hold_running()
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            post()
        stop_group(self.redis, timeout_s=5, sig=signal.SIGKILL)
        outage = {"posts": 0, "503": 0, "other": Counter(), "max_s": 0.0, "readyz_503": 0}
        t_end = time.monotonic() + outage_s
        while time.monotonic() < t_end:
            status, took = post()
            outage["posts"] += 1
            outage["max_s"] = max(outage["max_s"], took)
            if status == 503:
                outage["503"] += 1
            else:
                outage["other"][status] += 1
            outage["readyz_503"] += _http("GET", self.url + "/readyz")[0] == 503
        self.start_redis()
        restarted = time.monotonic()
        while _http("GET", self.url + "/readyz")[0] != 200:
            time.sleep(0.2)
        ready_s = time.monotonic() - restarted
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:
            post()
        self.wait([held.id, *jobs], 300)
        return {
            "case": f"Redis SIGKILL, {outage_s:g} s outage under POSTs, restarted",
            **self.outcome(jobs, [held.id]),
            "outage_posts": outage["posts"],
            "outage_503": outage["503"],
            "outage_other_status": dict(outage["other"]),
            "outage_max_answer_s": round(outage["max_s"], 3),
            "readyz_503_during_outage": outage["readyz_503"],
            "readyz_200_after_restart_s": round(ready_s, 1),
            "seconds_to_last_result": round(time.monotonic() - restarted, 1),
        }

    def bounded(self, n: int = 10000, window: int = 200) -> dict:
        import psutil
        import redis

        db = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        worker = self.workers[-1]

        def rss_mb() -> dict:
            main = psutil.Process(worker.proc.pid)
            children = main.children()
            return {
                "main_mb": round(main.memory_info().rss / 2**20, 1),
                "child_mb": round(sum(c.memory_info().rss for c in children) / 2**20, 1),
                "child_pids": [c.pid for c in children],
            }

        def redis_state() -> dict:
            keys = list(db.scan_iter(count=5000))
            pipe = db.pipeline()
            for k in keys:
                pipe.ttl(k)
            ttls = pipe.execute()
            return {
                "keys": len(keys),
                "keys_without_ttl": sum(t == -1 for t in ttls),
                "used_memory_mb": round(db.info("memory")["used_memory"] / 2**20, 2),
            }

        marks, pending, done, started = {}, [], 0, time.monotonic()
        marks[0] = {**redis_state(), **rss_mb()}
        plan = self.jobs_for(n)
        for k, (customer, top) in enumerate(plan, 1):
            status, body, _ = _http("POST", self.url + "/jobs", {"customer_id": customer, "top": top})
            assert status == 202, (status, body)
            pending.append(body["job_id"])
            if len(pending) >= window or k == n:
                self.wait(pending, 600)
                done += len(pending)
                pending = []
                if done in (1000, 5000, n) or (done % 1000 == 0 and done not in marks):
                    marks[done] = {**redis_state(), **rss_mb()}
        elapsed = time.monotonic() - started
        first, last = marks[1000], marks[n]
        growth = (last["main_mb"] + last["child_mb"]) / (first["main_mb"] + first["child_mb"]) - 1
        child_growth = last["child_mb"] / first["child_mb"] - 1
        db.close()
        return {
            "jobs": n,
            "seconds": round(elapsed, 1),
            "jobs_per_s": round(n / elapsed, 1),
            "at": {str(k): v for k, v in sorted(marks.items())},
            "rss_growth_1000_to_last": round(growth, 4),
            "child_rss_growth_1000_to_last": round(child_growth, 4),
            "same_pool_child": first["child_pids"] == last["child_pids"],
            "ttl": {
                "results_s": self.settings.result_expires_s,
                "job_registry_s": self.settings.job_registry_ttl_s,
            },
            "rss_bound_holds": growth <= 0.10,
        }


def bench_faults(n_jobs: int = 100, n_bounded: int = 10000) -> dict:
    from bench.__main__ import _model_dir

    base = Settings.from_env()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        bench = Bench(tmp, _model_dir(base, tmp))
        out: dict = {
            "cpu_count": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "visibility_timeout_s": VT_S,
            "appendfsync": bench.settings.redis_appendfsync,
        }
        try:
            bench.start_worker()
            bench.start_web()
            out["kill_child"] = bench.kill_child(n_jobs)
            out["kill_main"] = bench.kill_main(n_jobs)
            out["redis_crash"] = bench.redis_crash()
            out["bounded"] = bench.bounded(n_bounded)
        finally:
            out["load_avg_at_end"] = os.getloadavg()
            bench.close()
    faults = [out[k] for k in ("kill_child", "kill_main", "redis_crash")]
    out["all_hold"] = (
        all(f["lost"] == 0 and f["ran_more_than_once"] == 0 and f["wrong_results"] == 0 for f in faults)
        and out["bounded"]["rss_bound_holds"]
    )
    return out
