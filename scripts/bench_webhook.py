"""Benchmark: signed /sms through gunicorn vs a bare Flask endpoint returning constant TwiML.

All servers run under the same gunicorn settings as `phischer serve` (2 gthread workers x 4
threads), in the same run, loaded by wrk (not Python, so the load generator does not compete
for the GIL on the same interpreter). Each phischer request is a distinct, correctly signed
Twilio post (unique MessageSid, 1,000 phone numbers) answered by the retrieval backend over
the bundled sample personas, so every request stores the inbound text, answers and stores the
reply. A third server, the floor, does only what the contract asks of every text (check the
signature, commit the text, commit a reply) to show what two commits per text cost here.

    python scripts/bench_webhook.py [--duration 10] [--connections 8] [--repeat 3]

Prints requests/s of each, the ratios, and p50/p99 latency. Needs `wrk` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phischer.server import THREADS, WORKERS  # noqa: E402

TEXTS = [
    "hey how are you",
    "what are you up to",
    "any plans this weekend?",
    "good morning!",
    "i had a rough day",
    "what's your favourite food",
    "tell me a joke",
    "where do you live",
    "what do you do for work",
    "good night",
    "thanks so much",
    "want to grab dinner?",
    "did you see the game",
    "what music are you into",
    "how's the weather there",
]


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until GET url answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with code {proc.returncode}")
        try:
            with urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not become healthy")


def serve_bare(port: int, workers: int, threads: int) -> None:
    """The baseline: a Flask app answering constant TwiML, same gunicorn settings."""
    from flask import Flask, Response

    from phischer.server import GunicornServer, gunicorn_options

    app = Flask("bare")
    body = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>hi</Message></Response>'

    @app.post("/sms")
    def sms() -> Response:
        return Response(body, mimetype="text/xml")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status": "ok"}', mimetype="application/json")

    GunicornServer(app, gunicorn_options("127.0.0.1", port, workers, threads)).run()


def serve_floor(port: int, workers: int, threads: int, db_path: str, token: str) -> None:
    """The floor: the least the contract asks of a text, under the same gunicorn settings.

    Check the Twilio signature, commit the inbound text, then commit a constant reply: one
    table, no contacts, commands, history or model, on the same SQLite settings and write
    lock as phischer. It shows what a webhook that commits twice per text can reach here.
    """
    import hmac
    import sqlite3
    from urllib.parse import parse_qsl

    from flask import Flask, Response, abort, request
    from twilio.request_validator import RequestValidator

    from phischer.db import WriteLock
    from phischer.per_process import PerProcess
    from phischer.server import GunicornServer, gunicorn_options

    setup = sqlite3.connect(db_path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute(
        "CREATE TABLE IF NOT EXISTS texts (id INTEGER PRIMARY KEY, sid TEXT UNIQUE, "
        "body TEXT NOT NULL, reply_to INTEGER)"
    )
    setup.commit()
    setup.close()

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    conn = PerProcess(connect)
    lock = WriteLock(Path(db_path))
    validator = RequestValidator(token)
    app = Flask("floor")
    twiml = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>hi</Message></Response>'

    @app.post("/sms")
    def sms() -> Response:
        form = dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
        expected = validator.compute_signature(request.url, form)
        if not hmac.compare_digest(expected, request.headers.get("X-Twilio-Signature", "")):
            abort(403)
        db = conn.get()
        with lock.hold():
            cur = db.execute(
                "INSERT INTO texts (sid, body) VALUES (?, ?)", (form["MessageSid"], form["Body"])
            )
            db.commit()
        with lock.hold():
            db.execute("INSERT INTO texts (body, reply_to) VALUES ('hi', ?)", (cur.lastrowid,))
            db.commit()
        return Response(twiml, mimetype="text/xml")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status": "ok"}', mimetype="application/json")

    GunicornServer(app, gunicorn_options("127.0.0.1", port, workers, threads)).run()


def lua_script(path: Path, url: str, token: str, count: int, threads: int, run: int = 0) -> None:
    """A wrk script cycling through `count` distinct signed requests, strided per wrk thread."""
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    validator = RequestValidator(token)
    rng = random.Random(0)
    data = path.with_suffix(".tsv")
    with data.open("w") as fh:
        for i in range(count):
            params = {
                "MessageSid": f"SM{run:02x}{i:030x}",  # fresh per run: no idempotent replays
                "AccountSid": "AC" + "0" * 32,
                "From": f"+1555{rng.randrange(1000):07d}",
                "To": "+15550199",
                "Body": rng.choice(TEXTS),
                "NumMedia": "0",
            }
            signature = validator.compute_signature(url, params)
            fh.write(f"{urlencode(params)}\t{signature}\n")
    # Requests are read from a file at init: LuaJIT refuses a chunk with 65k+ constants.
    # Each wrk thread has its own Lua state, so threads stride through the list.
    path.write_text(LUA.replace("DATA", json.dumps(str(data))).replace("NTHREADS", str(threads)))


LUA = """
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  reqs = {}
  for line in io.lines(DATA) do
    local body, sig = line:match("([^\t]*)\t(.*)")
    table.insert(reqs, {body, sig})
  end
  idx = tid
end
function request()
  idx = idx + NTHREADS
  local r = reqs[(idx % #reqs) + 1]
  local headers = {}
  headers["Content-Type"] = "application/x-www-form-urlencoded"
  headers["X-Twilio-Signature"] = r[2]
  return wrk.format("POST", "/sms", headers, r[1])
end
function done(summary, latency, requests)
  io.write(string.format("JSON {\\"p50\\": %f, \\"p99\\": %f, \\"errors\\": %d, \\"non2xx\\": %d}\\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


# A run counts when its least busy worker used at least this share of the busiest one's CPU.
BALANCED = 0.6


def worker_cpu(master: int) -> dict[int, int]:
    """CPU ticks (user + system) of each gunicorn worker, by pid."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:  # fields[1] is the parent pid
            out[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
    return out


def balance(before: dict[int, int], after: dict[int, int]) -> float:
    """Least busy worker's CPU over the busiest one's during a run (1.0: evenly loaded)."""
    used = [after[pid] - before.get(pid, 0) for pid in after]
    return min(used) / max(used) if used and max(used) > 0 else 0.0


def run_wrk(url: str, script: Path, args: argparse.Namespace) -> dict[str, float]:
    """Run wrk and return requests/s, p50 and p99 in ms, and error counts."""
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    stats = json.loads(re.search(r"^JSON (.*)$", out, re.M).group(1))
    return {"rps": rps, **stats}


def main() -> None:
    """Run both servers, load them with wrk, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=80_000, help="distinct signed requests")
    parser.add_argument("--workers", type=int, default=WORKERS, help="gunicorn workers (both)")
    parser.add_argument("--gthreads", type=int, default=THREADS, help="threads per worker (both)")
    # wrk's connections stay with the worker that accepted them, so a run may load one
    # worker or both: the bare endpoint swings between ~2,000 and ~6,000 req/s on 2 cores.
    # Runs where a worker sat mostly idle (by its CPU time) are repeated, up to 3x --repeat
    # runs, and the best run with every worker busy counts.
    parser.add_argument(
        "--repeat", type=int, default=3, help="balanced runs per server; best counts"
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.workers, args.gthreads)
        return
    if args.serve_floor:
        port, db_path, token_file = args.serve_floor
        token = Path(token_file).read_text().strip()
        serve_floor(int(port), args.workers, args.gthreads, db_path, token)
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="phischer-bench-"))
    env = dict(os.environ, INSTANCE_PATH=str(work / "instance"), DAILY_LIMIT="100000")
    for var in ("DATABASE_URL", "PUBLIC_URL", "TWILIO_AUTH_TOKEN", "ALLOWED_NUMBERS"):
        env.pop(var, None)
    phischer = [sys.executable, "-m", "phischer"]
    subprocess.run(phischer + ["db", "upgrade"], env=env, check=True, cwd=work)
    subprocess.run(phischer + ["seed"], env=env, check=True, cwd=work)
    from phischer.config import dev_auth_token

    token = dev_auth_token(work / "instance")  # the same token the server will read

    results: dict[str, dict[str, float]] = {}
    all_runs: dict[str, list[dict[str, float]]] = {}
    for name in ("bare", "floor", "phischer"):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if name == "bare":
            cmd = [sys.executable, __file__, "--serve-bare", str(port)]
        elif name == "floor":
            floor_db, token_file = work / "floor.db", work / "instance" / "dev_auth_token"
            cmd = [sys.executable, __file__, "--serve-floor", str(port), str(floor_db)]
            cmd.append(str(token_file))
        else:
            cmd = phischer + ["serve", "--port", str(port)]
        cmd += [
            "--workers",
            str(args.workers),
            f"--{'threads' if name == 'phischer' else 'gthreads'}",
            str(args.gthreads),
        ]
        proc = subprocess.Popen(
            cmd, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_healthy(base + "/healthz", proc)
            runs: list[dict[str, float]] = []
            for run in range(args.repeat * 3):
                script = work / f"{name}{run}.lua"
                count = 1 if name == "bare" else args.requests
                lua_script(script, base + "/sms", token, count, args.threads, run)
                before = worker_cpu(proc.pid)
                result = run_wrk(base + "/sms", script, args)
                result["balance"] = balance(before, worker_cpu(proc.pid))
                runs.append(result)
                if sum(r["balance"] >= BALANCED for r in runs) >= args.repeat:
                    break
            all_runs[name] = runs
            balanced = [r for r in runs if r["balance"] >= BALANCED] or runs
            results[name] = max(balanced, key=lambda r: r["rps"])
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    bare, floor, ours = results["bare"], results["floor"], results["phischer"]
    print(
        f"machine: {os.cpu_count()} cores; gunicorn {args.workers} workers x {args.gthreads} "
        f"threads (gthread); wrk {args.threads} threads, {args.connections} connections, "
        f"{args.duration} s; best of {args.repeat} runs each with every worker busy"
    )
    for name, runs in all_runs.items():
        listed = ", ".join(
            f"{r['rps']:.0f} (p99 {r['p99']:.1f} ms, balance {r['balance']:.2f})" for r in runs
        )
        print(f"  {name} runs, req/s: {listed}")
    print(f"{'':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'non-2xx':>9}")
    for label, r in (
        ("bare Flask (TwiML)", bare),
        ("floor (sig + 2 commits)", floor),
        ("phischer /sms", ours),
    ):
        print(
            f"{label:<22}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
            f"{r['errors']:>8.0f}{r['non2xx']:>9.0f}"
        )
    ratio = ours["rps"] / bare["rps"]
    print(
        f"floor/bare: {floor['rps'] / bare['rps']:.2f}  (signature + two commits, nothing else); "
        f"phischer/floor: {ours['rps'] / floor['rps']:.2f}"
    )
    print(
        f"ratio phischer/bare: {ratio:.2f}  (target >= 0.5); p99 {ours['p99']:.1f} ms "
        f"(target < 50 ms)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
