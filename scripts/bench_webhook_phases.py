"""Benchmark: where a text's CPU goes inside the app, phase by phase, against a bare endpoint.

Calls the WSGI apps directly in one thread (no sockets, no gunicorn), so the figures are the
app's own cost: what `scripts/bench_webhook.py` measures end to end adds gunicorn, HTTP and
the contention of two workers on one SQLite file. Each request is a distinct signed Twilio
post (unique MessageSid, 1,000 phone numbers) answered by the retrieval backend over the
bundled sample personas, exactly like the end-to-end benchmark.

    python scripts/bench_webhook_phases.py [--requests 2000] [--repeat 3]

Prints CPU microseconds per request (thread CPU time, best of --repeat rounds) for the bare
endpoint, the whole phischer request, and its phases. Logging is set up as `phischer serve`
sets it up (INFO, the same format; written to /dev/null), so the per-text log line counts.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_webhook import TEXTS  # noqa: E402

URL = "http://localhost/sms"
BARE_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Message>hi</Message></Response>'


def make_environs(token: str, start: int, count: int, rng: random.Random) -> list[dict]:
    """Signed WSGI environs for `count` distinct Twilio posts."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(token)
    out = []
    for i in range(start, start + count):
        params = {
            "MessageSid": f"SM{i:032x}",
            "AccountSid": "AC" + "0" * 32,
            "From": f"+1555{rng.randrange(1000):07d}",
            "To": "+15550199",
            "Body": rng.choice(TEXTS),
            "NumMedia": "0",
        }
        body = urlencode(params).encode()
        out.append(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/sms",
                "QUERY_STRING": "",
                "SCRIPT_NAME": "",
                "SERVER_NAME": "localhost",
                "SERVER_PORT": "80",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "HTTP_HOST": "localhost",
                "wsgi.url_scheme": "http",
                "wsgi.errors": sys.stderr,
                "CONTENT_TYPE": "application/x-www-form-urlencoded",
                "CONTENT_LENGTH": str(len(body)),
                "wsgi.input": io.BytesIO(body),
                "HTTP_X_TWILIO_SIGNATURE": validator.compute_signature(URL, params),
            }
        )
    return out


def cpu_per_request(app: Callable, environs: list[dict]) -> float:
    """Thread CPU microseconds per request over `environs`."""
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    begin = time.thread_time()
    for environ in environs:
        b"".join(app(environ, start_response))
    spent = time.thread_time() - begin
    if not all(s.startswith("200") for s in statuses):
        raise SystemExit(f"unexpected status: {statuses[:3]}")
    return spent / len(environs) * 1e6


# CPU time of the timed calls made inside each timed call now running (innermost last).
_nested: list[float] = []


def timed(phases: Counter, label: str, obj: Any, name: str) -> None:
    """Wrap obj.name so its thread CPU time, less that of timed calls inside it, adds up under `label`."""
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Phases nest (build_thread reads the history as it goes): each counts only its own.
        begin = time.thread_time()
        _nested.append(0.0)
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.thread_time() - begin
            phases[label] += spent - _nested.pop()
            if _nested:
                _nested[-1] += spent

    setattr(obj, name, wrapper)


def main() -> None:
    """Build the app on a fresh instance, run the rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best counts")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="phischer-phases-"))
    os.environ.update(INSTANCE_PATH=str(work / "instance"), DAILY_LIMIT="1000000")
    for var in ("DATABASE_URL", "PUBLIC_URL", "TWILIO_AUTH_TOKEN", "ALLOWED_NUMBERS"):
        os.environ.pop(var, None)
    os.chdir(work)
    phischer = [sys.executable, "-m", "phischer"]
    subprocess.run(phischer + ["db", "upgrade"], check=True, capture_output=True)
    subprocess.run(phischer + ["seed"], check=True, capture_output=True)

    from flask import Flask, Response

    from phischer import create_app
    from phischer.cli import LOG_FORMAT
    from phischer.config import dev_auth_token

    # As `phischer serve` logs (cli.configure_logging), to a sink instead of the terminal.
    sink = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sink)

    app = create_app()
    bare = Flask("bare")
    bare.post("/sms")(lambda: Response(BARE_TWIML, mimetype="text/xml"))

    services = app.extensions["phischer"]
    sms = services.sms
    phases: Counter = Counter()
    timed(phases, "signature check", services.signatures, "is_valid")
    timed(phases, "transaction 1 (store text, commands, counter)", sms, "_record")
    timed(phases, "history read", sms.store, "_history_rows")
    timed(phases, "retrieval reply (BM25)", sms.backends.get("retrieval"), "reply")
    timed(phases, "transaction 2 (store reply)", sms, "_store")
    import phischer.inbound
    import phischer.webhook

    timed(phases, "form parsing", phischer.webhook, "form_params")
    timed(phases, "thread building", phischer.inbound, "build_thread")
    timed(phases, "per-text log line", phischer.inbound.log, "info")

    token = dev_auth_token(work / "instance")
    rng = random.Random(0)
    cpu_per_request(app, make_environs(token, 10**6, 200, rng))  # warm caches, contacts
    best: dict[str, float] = {}
    for round_ in range(args.repeat):
        phases.clear()
        environs = make_environs(token, round_ * args.requests, args.requests, rng)
        results = {
            "bare Flask endpoint (whole request)": cpu_per_request(
                bare, make_environs(token, 0, args.requests, rng)
            ),
            "phischer /sms (whole request)": cpu_per_request(app, environs),
        }
        results.update({k: v / args.requests * 1e6 for k, v in phases.items()})
        for label, value in results.items():
            best[label] = min(best.get(label, float("inf")), value)

    sms.shutdown()
    services.db.dispose()
    print(
        f"in-process, one thread, CPU per request (best of {args.repeat} rounds of "
        f"{args.requests} requests):"
    )
    for label, value in best.items():
        print(f"  {label:<48}{value:>8.0f} µs")
    accounted = sum(v for k, v in best.items() if "whole" not in k)
    rest = best["phischer /sms (whole request)"] - accounted
    print(f"  {'Flask, TwiML and the rest':<48}{rest:>8.0f} µs")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
