"""The thread the model is served has the shape of the examples it was trained on (DESIGN §7).

A seeded random two-person chat (runs of texts, multi-line and unicode texts, photos, long
silences, replies that come late) is written as a WhatsApp or Telegram export and turned
into a dataset by `phischer import`; the same chat is then replayed text by text through the
signed webhook on a set clock, the person's replies coming from the fake OpenAI server (an
empty answer where the person did not reply, so the texter's next text follows theirs).

For every reply, the messages the model got must be the conversation up to that reply as
the dataset holds it (same system prompt, sessions, merged turns, texts), cut to its last
HISTORY_TURNS turns; and with --max-turns equal to HISTORY_TURNS, every training example's
context is the end of what the model was served for that reply.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from phischer.thread import build_thread
from tests.conftest import run, set_model
from tests.test_clock import Clock

TEXTER, PERSON = "Bea Ortiz", "Ana Lima"
SECOND = dt.timedelta(seconds=1)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
START = dt.datetime(2024, 3, 13, 9, 0, 0)  # day 13: the export's dates read day-first

WORDS = [
    "ok", "see you at 8", "café?", "naïve question", "😂", "👍🏽", "🏳️‍🌈", "日本語もOK",
    "שלום", "مرحبا", "what's up", "no way!!", "Zoë says hi", "tab\there", "  two  spaces ",
    "ñandú", "I'll bring the 🍕", "Ελλάδα", "at 10:30: the usual", "x", "<3", "a & b",
    "‘quoted’", "—dash—", "1/2 cup",
]  # fmt: skip
PHOTO = ""  # the texter's photo: no text


@dataclass(frozen=True)
class Text:
    """One message of the chat."""

    who: str
    text: str
    at: dt.datetime


def _text(rng: random.Random) -> str:
    """A text: a few words, sometimes on several lines (one of them, rarely, blank)."""
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    if len(lines) > 1 and rng.random() < 0.2:
        lines.insert(1, "")
    return "\n".join(lines).strip()


def _silence(rng: random.Random, gap: dt.timedelta) -> dt.timedelta:
    """A silence before the texter writes: short, long, exactly the session gap, just over it."""
    return rng.choice(
        [
            rng.randint(1, 90) * SECOND,
            rng.randint(2, 300) * MINUTE,
            gap,
            gap + SECOND,
            gap - SECOND,
            rng.randint(1, 40) * 24 * HOUR,
        ]
    )


def conversation(seed: int, gap: dt.timedelta, exchanges: int = 45) -> list[Text]:
    """A random chat: texter runs (some with photos), each answered by a person run or not."""
    rng = random.Random(seed)
    chat: list[Text] = []
    replies: set[str] = set()
    at = START
    for _ in range(exchanges):
        run_length = rng.choice([1, 1, 1, 2, 3, 5, 12])
        for i in range(run_length):
            long = i == 0 or rng.random() < 0.3
            at += _silence(rng, gap) if long else rng.randint(1, 60) * SECOND
            chat.append(Text(TEXTER, PHOTO if rng.random() < 0.08 else _text(rng), at))
        if chat[-1].text == PHOTO or rng.random() < 0.15:
            continue  # no answer (to a photo the webhook answers itself)
        at += gap + HOUR if rng.random() < 0.05 else rng.randint(5, 900) * SECOND
        run = [_text(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        reply = "\n".join(run)
        if reply in replies:  # each reply names its model call: keep them apart
            continue
        replies.add(reply)
        for i, text in enumerate(run):
            at += SECOND * rng.randint(1, 120) if i else dt.timedelta()
            chat.append(Text(PERSON, text, at))
    return chat


# -- the chat as an export -----------------------------------------------------------------


def write_whatsapp(chat: list[Text], folder: Path) -> Path:
    """The chat as iOS exports it ("[13/03/2024, 09:00:00] Name: text"; a photo is marked)."""
    lines = []
    for m in chat:
        text = m.text or "\u200eimage omitted"
        lines.append(f"[{m.at:%d/%m/%Y, %H:%M:%S}] {m.who}: {text}")
    path = folder / f"WhatsApp Chat - {TEXTER}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_telegram(chat: list[Text], folder: Path) -> Path:
    """The chat as Telegram Desktop's single-chat result.json (a photo has no text)."""
    messages = []
    for i, m in enumerate(chat, start=1):
        unix = int(m.at.replace(tzinfo=dt.UTC).timestamp())
        entry = {
            "id": i,
            "type": "message",
            "date": m.at.isoformat(),
            "date_unixtime": str(unix),
            "from": m.who,
            "from_id": "user1" if m.who == TEXTER else "user2",
            "text": m.text,
        }
        if not m.text:
            entry["photo"] = "(File not included. Change data exporting settings to download.)"
        messages.append(entry)
    chat_json = {"name": TEXTER, "type": "personal_chat", "id": 42, "messages": messages}
    path = folder / "result.json"
    path.write_text(json.dumps(chat_json, ensure_ascii=False), encoding="utf-8")
    return path


WRITERS = {"whatsapp": write_whatsapp, "telegram": write_telegram}


def build_dataset(fmt: str, export: Path, out: Path, gap_hours: float, max_turns: int) -> list:
    """`phischer import` of the export; its examples' message lists, in file order."""
    result = run(
        "import", fmt, str(export), "--me", PERSON, "-o", str(out),
        "--gap-hours", f"{gap_hours}", "--max-turns", str(max_turns),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8") as fh:
        return [json.loads(line)["messages"] for line in fh]


# -- the chat through the webhook ----------------------------------------------------------


def reply_after(chat: list[Text], i: int) -> tuple[str, dt.datetime | None]:
    """The person's run right after message `i`, as one reply, and when its last text came."""
    run = []
    for m in chat[i + 1 :]:
        if m.who != PERSON:
            break
        run.append(m)
    return "\n".join(m.text for m in run), run[-1].at if run else None


def late_replies(chat: list[Text], gap: dt.timedelta) -> set[str]:
    """The person's replies that came more than `gap` after the text before them."""
    return {
        reply_after(chat, i)[0]
        for i, (m, after) in enumerate(zip(chat, chat[1:], strict=False))
        if m.who == TEXTER and after.who == PERSON and after.at - m.at > gap
    }


def replay(chat: list[Text], post: Callable[..., object], clock: Clock, fake_openai) -> dict:
    """Text the chat to the webhook; the thread the model got for each reply, by reply."""
    start = clock.at  # serving time = the clock's start + (the chat's time - START)
    script = []  # (answer, when it was sent) per model call, in order; "": no answer
    for i, m in enumerate(chat):
        if m.who == TEXTER and m.text:
            reply, at = reply_after(chat, i)
            script.append((reply, start + ((at or m.at) - START)))
    answers = iter(script)

    def answer(body: dict) -> str:
        text, when = next(answers)
        clock.at = when  # the reply is stored at the time the person sent it
        return text

    fake_openai.responder = answer
    for m in chat:
        if m.who == TEXTER:
            clock.at = start + (m.at - START)
            if m.text:
                post(m.text)
            else:
                post("", NumMedia="1", MediaUrl0="https://api.twilio.com/photo.jpg")
    calls = fake_openai.chat_calls
    assert len(calls) == len(script)
    return {text: call["messages"] for call, (text, _) in zip(calls, script, strict=True) if text}


def last_turns(turns: list[dict], history_turns: int) -> list[dict]:
    """The longest end of `turns` with at most `history_turns` turns that starts with a user's."""
    kept = turns[-history_turns:]
    return kept[1:] if kept and kept[0]["role"] == "assistant" else kept


def trained_contexts(examples: list[list[dict]]) -> dict[str, list[dict]]:
    """The messages before each assistant turn of the examples, by that turn's text."""
    contexts = {}
    for messages in examples:
        for j, m in enumerate(messages):
            if m["role"] == "assistant":
                assert m["content"] not in contexts
                contexts[m["content"]] = messages[:j]
    return contexts


CASES = [
    # (export format, seed, HISTORY_TURNS, SESSION_GAP_HOURS = --gap-hours)
    ("whatsapp", 1, 4, 6.0),
    ("telegram", 2, 4, 6.0),
    ("whatsapp", 3, 6, 0.5),
    ("telegram", 4, 3, 2.5),
    ("whatsapp", 5, 20, 6.0),
    ("telegram", 6, 2, 6.0),
]


@pytest.mark.parametrize(("fmt", "seed", "history_turns", "gap_hours"), CASES)
def test_the_served_thread_is_the_dataset_conversation_up_to_each_reply(
    make_app, database, fake_openai, twilio_post, monkeypatch, tmp_path,
    fmt, seed, history_turns, gap_hours,
):  # fmt: skip
    gap = dt.timedelta(hours=gap_hours)
    chat = conversation(seed, gap)
    export = WRITERS[fmt](chat, tmp_path)
    # Whole conversations (one example each), and the windows a user would train on.
    whole = build_dataset(fmt, export, tmp_path / "whole.jsonl", gap_hours, 100_000)
    max_turns = history_turns + history_turns % 2
    windows = build_dataset(fmt, export, tmp_path / "ana.jsonl", gap_hours, max_turns)

    result = run(
        "persona", "add", PERSON, "--keyword", "ana", "--backend", "openai",
        "--model", "ft:gpt-4.1-mini:ana", "--base-url", fake_openai.base_url,
        "--dataset", str(tmp_path / "ana.jsonl"), "--default",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    clock = Clock()
    monkeypatch.setattr("phischer.inbound.utcnow", clock)
    app = make_app(
        history_turns=history_turns,
        session_gap_hours=gap_hours,
        reply_mode="inline",
        model_retries=0,
        daily_limit=10_000,
    )

    def post(body: str, **extra: str) -> object:
        return twilio_post(body, target=app, **extra)

    served = replay(chat, post, clock, fake_openai)

    conversations = trained_contexts(whole)
    # A reply sent after a silence longer than the gap opens a conversation: nothing trains it.
    assert set(served) - set(conversations) == late_replies(chat, gap)
    assert len(conversations) > 30
    for reply, context in conversations.items():
        system, *turns = context
        assert served[reply] == [system, *last_turns(turns, history_turns)], reply

    # With --max-turns = HISTORY_TURNS (rounded up to even, as --max-turns is rounded down),
    # what the model learnt each reply from is the end of what it is served before it.
    for reply, context in trained_contexts(windows).items():
        system, *turns = context
        assert served[reply][0] == system
        assert served[reply][-len(turns) :] == turns, reply
        assert len(served[reply]) - 1 <= max_turns - 1


# -- a run of texts longer than the rows read first ------------------------------------------


def test_a_run_of_texts_longer_than_the_first_read_is_one_whole_turn(
    make_app, personas, database, fake_openai, twilio_post
):
    # HISTORY_TURNS=3 reads 8 rows first; the model was down for 8 of 9 texts in a row.
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app(history_turns=3, reply_mode="inline", model_retries=0)
    twilio_post("hello", target=app)
    fake_openai.behaviour = "empty"
    texts = [f"text {i}" for i in range(1, 10)]
    for text in texts[:-1]:
        twilio_post(text, target=app)
    fake_openai.behaviour = "ok"
    twilio_post(texts[-1], target=app)
    assert fake_openai.chat_calls[-1]["messages"] == [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "\n".join(texts)},
    ]


def test_the_thread_reads_the_history_only_as_far_as_its_window():
    at = dt.datetime(2024, 3, 13, 9)
    read = []

    def rows():  # newest first, alternating, far longer than any window
        for i in range(1000):
            read.append(i)
            yield ("in" if i % 2 == 0 else "out", f"text {i}", at - i * SECOND)

    thread = build_thread(rows(), system_prompt=None, history_turns=4, gap_hours=6)
    assert [m["content"] for m in thread] == ["text 2", "text 1", "text 0"]
    assert len(read) == 5  # four turns, and the first text of the one before them


def test_a_run_of_texts_past_the_thread_bound_keeps_only_whole_turns(monkeypatch):
    import phischer.thread as thread_module

    monkeypatch.setattr(thread_module, "MAX_THREAD_TEXTS", 10)
    at = dt.datetime(2024, 3, 13, 9)
    # Newest first: 3 texts, a reply, then a run of 50 texts left unanswered before it.
    rows = [("in", f"new {i}", at - i * SECOND) for i in range(3)]
    rows.append(("out", "reply", at - 3 * SECOND))
    rows += [("in", f"old {i}", at - (4 + i) * SECOND) for i in range(50)]
    thread = build_thread(iter(rows), system_prompt=None, history_turns=20, gap_hours=6)
    # The run is cut by the bound, so it is left out, and with it the reply it got.
    assert thread == [{"role": "user", "content": "new 2\nnew 1\nnew 0"}]
    # A run that is the only turn keeps its newest texts.
    only = [("in", f"t {i}", at - i * SECOND) for i in range(50)]
    thread = build_thread(iter(only), system_prompt=None, history_turns=20, gap_hours=6)
    assert thread == [{"role": "user", "content": "\n".join(f"t {i}" for i in range(9, -1, -1))}]


def test_a_thread_of_long_texts_keeps_the_newest_whole_turns_within_its_size():
    from phischer.thread import MAX_THREAD_CHARS

    at = dt.datetime(2024, 3, 13, 9)
    long = "x" * 1500  # near Twilio's 1,600: a burst sent while the model was down
    # Newest first, alternating: 20 turns of 1,500 characters would overflow a small model.
    rows = [("in" if i % 2 == 0 else "out", f"{i:02} {long}", at - i * SECOND) for i in range(20)]
    thread = build_thread(iter(rows), system_prompt="sys", history_turns=20, gap_hours=6)
    kept = [m["content"][:2] for m in thread[1:]]
    assert kept == [f"{i:02}" for i in range(8, -1, -1)]  # the newest, oldest a user's
    assert sum(len(m["content"]) for m in thread[1:]) <= MAX_THREAD_CHARS
    # A run too long for it is left out whole, with the reply it got.
    run_rows = [("in", "new", at), ("out", "reply", at - SECOND)]
    run_rows += [("in", f"old {long}", at - (2 + i) * SECOND) for i in range(20)]
    thread = build_thread(iter(run_rows), system_prompt=None, history_turns=20, gap_hours=6)
    assert thread == [{"role": "user", "content": "new"}]
    # A run that is the only turn keeps its newest texts.
    only = [("in", f"{i:02} {long}", at - i * SECOND) for i in range(20)]
    (turn,) = build_thread(iter(only), system_prompt=None, history_turns=20, gap_hours=6)
    assert [t[:2] for t in turn["content"].split("\n")] == [f"{i:02}" for i in range(9, -1, -1)]
