"""Build the bundled sample personas: a fictional Messenger export per persona + personas.json.

Usage:  .venv/bin/python scripts/make_sample_export.py [--out phischer/sample]

The chats are written by hand in scripts/sample_source/<keyword>.txt; this script turns them
into what Facebook's "Download your information" (JSON) gives you, so `phischer seed` runs the
real messenger importer on them. The output is deterministic (seeded per persona) and committed:
the app reads the JSON at run time, never the source.

Output, one export per persona because each persona is the owner of its own export:

    <out>/personas.json
    <out>/messenger/<keyword>/your_facebook_activity/messages/inbox/<thread>_<id>/message_1.json

Source format (one item per line, blank lines and `#` comments ignored):

    owner: Full Name                      the export owner (the persona)
    thread: Friend Name                   a 1:1 thread (title = the friend); repeat to add to it
    group: Title | Name A, Name B, …      a group thread with the owner and these people
    --- 2024-01-08 08:12                  a new session starting at this UTC time (sessions are
                                          sorted by time and must not overlap)
    Hélène: text                          a message from the participant whose name starts so
    > text                                a message from the owner
    Name: [photo] | [sticker] | [call SECONDS] | [unsent] | [reacted EMOJI] | [share URL]
          | [added Full Name]
                                          non-text items (the importer must drop or keep them)
    + Full Name EMOJI                     a reaction on the message above
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from phischer.commands import RESERVED_WORDS

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = Path(__file__).resolve().parent / "sample_source"
DEFAULT_OUT = ROOT / "phischer" / "sample"

# Facebook caps a thread file at 10,000 messages; the sample's threads are small, so a much lower
# cap makes the longest threads spill into message_2.json and exercises that quirk.
MESSAGES_PER_FILE = 80

PERSONAS = [
    {
        "name": "Marguerite Okafor",
        "keyword": "marguerite",
        "greeting": (
            "Hello, love! Marguerite here. The kettle's on and the starter's bubbling. "
            "What's new with you? x"
        ),
        "system": (
            "You are Marguerite Okafor, 66, a retired lighthouse keeper (31 years at Greyhaven "
            "Point) who now bakes sourdough and sells it from the window of her harbour cottage "
            "in Gullhaven. You live with your husband Ikenna and Bosun, a one-eyed ginger cat. "
            "You are warm and kind, write full sentences, use nautical turns of phrase and sign "
            'off with "x". Reply to texts the way she does.'
        ),
    },
    {
        "name": "Dex Varga",
        "keyword": "dex",
        "greeting": "yo. dex here. what's good",
        "system": (
            "You are Dex Varga, 24, a bike courier and amateur synth musician (the project is "
            "called low battery) who lives in a flat above a launderette with two flatmates and "
            "feeds a pigeon called kevin. You text in lowercase, short and dry, with slang, "
            "hardly any emoji and a kind streak under the deadpan. Reply to texts the way he "
            "does."
        ),
    },
]


@dataclass
class Item:
    """One message as written in the source, before timestamps and encoding."""

    sender: str
    text: str
    line: int
    reactions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Session:
    """Messages that follow one `---` header."""

    start: dt.datetime
    items: list[Item] = field(default_factory=list)


@dataclass
class Thread:
    """A 1:1 or group thread in the owner's inbox."""

    title: str
    participants: list[str]  # everyone but the owner
    is_group: bool
    sessions: list[Session] = field(default_factory=list)


class SourceError(ValueError):
    """A line of a source file cannot be understood."""


def parse_source(path: Path) -> tuple[str, list[Thread]]:
    """Read one persona's source file into its owner name and threads (in file order)."""
    owner = ""
    threads: dict[str, Thread] = {}
    current: Thread | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        where = f"{path.name}:{n}"
        if not line or line.startswith("#"):
            continue
        if line.startswith("owner:"):
            owner = line.partition(":")[2].strip()
        elif line.startswith(("thread:", "group:")):
            kind, _, rest = line.partition(":")
            title, _, names = rest.partition("|")
            title = title.strip()
            people = [p.strip() for p in names.split(",")] if kind == "group" else [title]
            if title not in threads:
                threads[title] = Thread(title, people, kind == "group")
            current = threads[title]
        elif line.startswith("---"):
            if current is None:
                raise SourceError(f"{where}: session before any thread")
            start = dt.datetime.strptime(line[3:].strip(), "%Y-%m-%d %H:%M")
            current.sessions.append(Session(start))
        elif line.startswith("+ "):
            session = _session(current, where)
            if not session.items:
                raise SourceError(f"{where}: reaction with no message above it")
            actor, _, emoji = line[2:].rpartition(" ")
            if actor not in (owner, *current.participants):
                raise SourceError(f"{where}: unknown reactor {actor!r}")
            session.items[-1].reactions.append((emoji, actor))
        elif line.startswith(">"):
            _session(current, where).items.append(Item(owner, line[1:].strip(), n))
        else:
            who, sep, text = line.partition(": ")
            if not sep:
                raise SourceError(f"{where}: expected 'Name: text' or '> text'")
            assert current is not None
            matches = [p for p in current.participants if p == who or p.split()[0] == who]
            if len(matches) != 1:
                raise SourceError(f"{where}: {who!r} is not one participant of {current.title}")
            _session(current, where).items.append(Item(matches[0], text.strip(), n))
    if not owner:
        raise SourceError(f"{path.name}: no 'owner:' line")
    return owner, list(threads.values())


def _session(thread: Thread | None, where: str) -> Session:
    if thread is None or not thread.sessions:
        raise SourceError(f"{where}: message before a '---' session header")
    return thread.sessions[-1]


def folder_name(title: str, rng: random.Random) -> str:
    """Facebook's thread folder: the title lowercased, ASCII letters/digits only, then an id."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]", "", ascii_title.lower()) or "facebookuser"
    return f"{slug}_{_digits(rng, 16)}"


def mojibake(value: object) -> object:
    """Apply Facebook's encoding bug: UTF-8 bytes read back as latin-1, on every string."""
    if isinstance(value, str):
        return value.encode("utf-8").decode("latin-1")
    if isinstance(value, list):
        return [mojibake(v) for v in value]
    if isinstance(value, dict):
        return {k: mojibake(v) for k, v in value.items()}
    return value


def to_messages(thread: Thread, owner: str, folder: str, rng: random.Random) -> list[dict]:
    """Timestamp and shape a thread's items as Messenger message dicts, oldest first."""
    out: list[dict] = []
    last: dt.datetime | None = None
    for session in sorted(thread.sessions, key=lambda s: s.start):
        t = session.start + dt.timedelta(
            seconds=rng.randrange(60), milliseconds=rng.randrange(1000)
        )
        if last is not None and t <= last:
            raise SourceError(
                f"{thread.title}: session {session.start} starts before the last ends"
            )
        prev_sender = None
        for item in session.items:
            if prev_sender is not None:
                # A second bubble from the same sender comes seconds later; a reply takes minutes.
                same = item.sender == prev_sender
                gap = rng.randrange(4, 40) if same else rng.randrange(25, 420)
                t += dt.timedelta(seconds=gap, milliseconds=rng.randrange(1000))
            prev_sender = item.sender
            out.append(_message(item, t, owner, folder, rng))
        last = t
    return out


def _message(item: Item, t: dt.datetime, owner: str, folder: str, rng: random.Random) -> dict:
    ms = int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)
    msg: dict = {"sender_name": item.sender, "timestamp_ms": ms}
    special = re.fullmatch(
        r"\[(photo|sticker|call|unsent|reacted|share|added)(?: (.+))?\]", item.text
    )
    kind, arg = special.groups() if special else (None, None)
    msg_type = "Generic"
    if kind == "photo":
        name = f"{_digits(rng, 17)}_{_digits(rng, 15)}_{_digits(rng, 19)}_n.jpg"
        uri = f"your_facebook_activity/messages/inbox/{folder}/photos/{name}"
        msg["photos"] = [{"uri": uri, "creation_timestamp": ms // 1000}]
    elif kind == "sticker":
        name = f"{_digits(rng, 9)}_{_digits(rng, 15)}_{_digits(rng, 19)}_n.png"
        msg["sticker"] = {"uri": f"your_facebook_activity/messages/stickers_used/{name}"}
    elif kind == "call":
        # Calls carry a line of text: only type/call_duration tell them apart from a real message.
        msg["content"] = f"{item.sender} called you." if item.sender != owner else "You called."
        msg["call_duration"] = int(arg or 0)
        msg_type = "Call"
    elif kind == "unsent":
        pass  # an unsent message keeps its sender and time but loses its content key
    elif kind == "reacted":
        # Some clients posted a reaction as an ordinary text message (note the trailing space).
        msg["content"] = f"Reacted {arg} to your message "
    elif kind == "share":
        msg["content"] = arg
        msg["share"] = {"link": arg}
        msg_type = "Share"
    elif kind == "added":
        # Group membership changes are system lines that read like text from the adder.
        msg["content"] = f"{item.sender} added {arg} to the group."
        msg["users"] = [{"name": arg}]
        msg_type = "Subscribe"
    else:
        msg["content"] = item.text
    if item.reactions:
        msg["reactions"] = [{"reaction": e, "actor": a} for e, a in item.reactions]
    msg["type"] = msg_type
    msg["is_unsent"] = kind == "unsent"
    return msg


def _digits(rng: random.Random, n: int) -> int:
    return rng.randrange(10 ** (n - 1), 10**n)


def write_thread(inbox: Path, thread: Thread, owner: str, rng: random.Random) -> int:
    """Write one thread's message_N.json files (newest first, N=1 newest); return file count."""
    folder = folder_name(thread.title, rng)
    messages = to_messages(thread, owner, folder, rng)
    messages.reverse()  # Facebook lists every file newest first
    chunks = [
        messages[i : i + MESSAGES_PER_FILE] for i in range(0, len(messages), MESSAGES_PER_FILE)
    ]
    out_dir = inbox / folder
    out_dir.mkdir(parents=True)
    image = {
        "uri": f"your_facebook_activity/messages/photos/{_digits(rng, 15)}.jpg",
        "creation_timestamp": messages[-1]["timestamp_ms"] // 1000,
    }
    for number, chunk in enumerate(chunks, 1):
        doc: dict = {
            "participants": [{"name": p} for p in [*thread.participants, owner]],
            "messages": chunk,
            "title": thread.title,
            "is_still_participant": True,
            "thread_type": "RegularGroup" if thread.is_group else "Regular",
            "thread_path": f"inbox/{folder}",
            "magic_words": [],
        }
        if thread.is_group:
            doc["image"] = image
            doc["joinable_mode"] = {"mode": 1, "link": ""}
        # Facebook writes ASCII-only JSON with 2-space indents: the mojibake shows up as \u00c3…
        text = json.dumps(mojibake(doc), ensure_ascii=True, indent=2)
        (out_dir / f"message_{number}.json").write_text(text + "\n", encoding="ascii")
    return len(chunks)


def build(out: Path) -> list[dict]:
    """Regenerate every persona's export and personas.json under `out`; return the personas."""
    personas = []
    for spec in PERSONAS:
        keyword = spec["keyword"]
        if keyword in RESERVED_WORDS or keyword != keyword.lower():
            raise SourceError(f"keyword {keyword!r} must be lowercase and not an SMS command")
        owner, threads = parse_source(SOURCE_DIR / f"{keyword}.txt")
        if owner != spec["name"]:
            raise SourceError(f"{keyword}.txt: owner {owner!r} != persona name {spec['name']!r}")
        export = out / "messenger" / keyword
        if export.exists():
            shutil.rmtree(export)
        inbox = export / "your_facebook_activity" / "messages" / "inbox"
        # A string seed is hashed with SHA-512, so ids and timings are the same on every run.
        rng = random.Random(f"phischer-sample-{keyword}")
        files = sum(write_thread(inbox, t, owner, rng) for t in threads)
        print(f"{keyword}: {len(threads)} threads, {files} files -> {export}", file=sys.stderr)
        personas.append({**spec, "export": f"messenger/{keyword}", "me": owner})
    text = json.dumps(personas, ensure_ascii=False, indent=2)
    (out / "personas.json").write_text(text + "\n", encoding="utf-8")
    return personas


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="sample folder to write")
    args = parser.parse_args()
    try:
        build(args.out)
    except SourceError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
