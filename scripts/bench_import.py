"""Benchmark `phischer import messenger` end to end on a generated 1M-message export.

    .venv/bin/python scripts/bench_import.py [--messages 1000000] [--threads 2000] [--runs 3]
                                             [--keep]

Writes a fictional legacy Messenger export ("Download your information", JSON) into a temp
folder: threads of uneven size (the big ones split into message_N.json files of 10,000
messages, newest first, like Facebook), ~10% group chats, mojibake-escaped accents and
emoji, and ~6% media/sticker/reaction/unsent/call messages. Then it runs the real CLI in a
subprocess `--runs` times and reports wall time, messages/s, CPU time and peak memory
(PSS of the import and its parsing workers, sampled; and the largest process's RSS).
Targets: >= 100,000 messages/s and peak memory < 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ME = "Zoë Martín"
_WORD_TEXT = (
    "hey ok lol yes no maybe tonight tomorrow dinner coffee work late sure thanks haha "
    "where when what why how about the a to at in on my your see you soon love it great "
    "café naïve jalapeño crème brûlée 😂 ❤️ 🙌 👍 movie train bus game pizza beer weekend"
)
WORDS = _WORD_TEXT.split()
FILE_SIZE = 10_000  # Facebook's messages per message_N.json


def _moji(s: str) -> str:
    # Facebook's legacy export escapes every UTF-8 byte as its own \\u00XX.
    return s.encode("utf-8").decode("latin-1")


def _sizes(total: int, threads: int, rng: random.Random) -> list[int]:
    weights = [rng.paretovariate(1.2) for _ in range(threads)]
    scale = total / sum(weights)
    sizes = [max(2, int(w * scale)) for w in weights]
    sizes[0] += total - sum(sizes)  # exact total
    if sizes[0] < 2:
        raise SystemExit("too few messages for that many threads")
    return sizes


def _message(rng: random.Random, sender: str, ts: int) -> dict:
    m: dict = {"sender_name": _moji(sender), "timestamp_ms": ts, "is_geoblocked_for_viewer": False}
    r = rng.random()
    if r < 0.02:
        m["photos"] = [{"uri": "messages/inbox/x/photos/1.jpg", "creation_timestamp": ts // 1000}]
    elif r < 0.03:
        m["sticker"] = {"uri": "messages/stickers_used/1.png"}
    elif r < 0.04:
        m["content"] = _moji(f"{sender} reacted ❤ to your message ")
    elif r < 0.05:
        m["is_unsent"] = True
        m["content"] = ""
    elif r < 0.06:
        m["type"] = "Call"
        m["call_duration"] = 60
        m["content"] = "The video chat ended."
    else:
        n = rng.randint(1, 14)
        m["content"] = _moji(" ".join(rng.choice(WORDS) for _ in range(n)))
    m.setdefault("type", "Generic")
    return m


def generate(root: Path, total: int, threads: int, seed: int = 0) -> None:
    """Write a legacy Messenger export of `total` messages over `threads` threads."""
    rng = random.Random(seed)
    inbox = root / "your_facebook_activity" / "messages" / "inbox"
    for t, size in enumerate(_sizes(total, threads, rng)):
        others = [f"Friend {t}"] + ([f"Pal {t}", f"Mate {t}"] if t % 10 == 0 else [])
        people = [ME, *others]
        ts = 1_600_000_000_000 + t * 1000
        msgs = []
        sender = rng.choice(people)
        for _ in range(size):
            # Replies come in bursts; now and then a long silence starts a new conversation.
            ts += rng.choice((20_000, 60_000, 300_000)) if rng.random() > 0.02 else 10 * 3_600_000
            if rng.random() < 0.45:
                sender = rng.choice([p for p in people if p != sender])
            msgs.append(_message(rng, sender, ts))
        msgs.reverse()  # newest first
        folder = inbox / f"friend{t}_{10_000 + t}"
        folder.mkdir(parents=True)
        for n, start in enumerate(range(0, size, FILE_SIZE), start=1):
            data = {
                "participants": [{"name": _moji(p)} for p in people],
                "messages": msgs[start : start + FILE_SIZE],
                "title": _moji(", ".join(others)),
                "is_still_participant": True,
                "thread_type": "RegularGroup" if len(people) > 2 else "Regular",
                "thread_path": f"inbox/{folder.name}",
                "magic_words": [],
            }
            with (folder / f"message_{n}.json").open("w", encoding="ascii") as fh:
                json.dump(data, fh, indent=2)


def _tree_memory_kib(pid: int) -> int:
    # Memory of a process and its children (Linux /proc; 0 elsewhere). PSS, not RSS:
    # forked workers share the parent's pages, and RSS would count those twice.
    total = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    except OSError:
        return total
    return total + sum(_tree_memory_kib(int(child)) for child in children)


@dataclass
class Run:
    """One timed `phischer import` subprocess."""

    elapsed: float
    cpu: float
    tree_mib: float
    largest_mib: float
    stdout: str


def _run(cmd: list[str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_fh, tempfile.TemporaryFile("w+") as err_fh:
        proc = subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, text=True)
        tree_peak = 0
        while proc.poll() is None:
            tree_peak = max(tree_peak, _tree_memory_kib(proc.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        out_fh.seek(0)
        err_fh.seek(0)
        stdout, stderr = out_fh.read(), err_fh.read()
    if proc.returncode != 0:
        sys.exit(f"import failed ({proc.returncode}): {stderr.strip()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # ru_maxrss: the largest single process so far (KiB on Linux).
    return Run(elapsed, cpu, tree_peak / 1024, after.ru_maxrss / 1024, stdout)


def main() -> None:
    """Generate, import, report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3, help="imports to time (best reported)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="phischer-bench-"))
    try:
        export = tmp / "export"
        t0 = time.perf_counter()
        generate(export, args.messages, args.threads)
        size = sum(p.stat().st_size for p in export.rglob("*.json"))
        print(
            f"generated {args.messages:,} messages in {args.threads:,} threads "
            f"({size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s"
        )
        # Let the kernel write the generated files out first: their writeback would
        # otherwise compete with the import for the disk.
        os.sync()
        out = tmp / "out.jsonl"
        cmd = [sys.executable, "-m", "phischer", "import", "messenger", str(export)]
        cmd += ["--me", ME, "-o", str(out)]
        runs = [_run(cmd) for _ in range(args.runs)]
        print(runs[0].stdout.strip())
        print()
        for n, r in enumerate(runs, start=1):
            print(
                f"run {n}: {r.elapsed:.2f} s end to end, {args.messages / r.elapsed:,.0f} "
                f"messages/s, CPU {r.cpu:.2f} s (import + workers), peak memory "
                f"{r.tree_mib:,.0f} MiB PSS (import + workers), largest process RSS "
                f"{r.largest_mib:,.0f} MiB"
            )
        best = min(runs, key=lambda r: r.elapsed)
        print(
            f"best: {args.messages / best.elapsed:,.0f} messages/s (target >= 100,000), "
            f"peak memory {max(r.tree_mib for r in runs):,.0f} MiB (target < 400)"
        )
        if args.keep:
            print(f"kept {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
