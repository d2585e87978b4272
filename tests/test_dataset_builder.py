"""The dataset builder: sessions, merged turns, group prefixes, windows, prompt, PII, JSONL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from phischer.dataset import (
    DEFAULT_SYSTEM,
    NEUTRAL_SYSTEM,
    BuildStats,
    Example,
    build_examples,
    mask_pii,
    match_me,
    names_a_person,
    system_prompt,
    write_jsonl,
)
from phischer.importers import ImportErrorMessage, load
from phischer.importers.base import Conversation, Message

T0 = dt.datetime(2024, 1, 1, 12, 0)
SYSTEM_ANA = {"role": "system", "content": DEFAULT_SYSTEM.format(me="Ana")}
FIXTURES = Path(__file__).parent / "fixtures"


def conv(*rows: tuple[float, str, str], group: bool = False, cid: str = "c1") -> Conversation:
    """Rows of (minutes after T0, sender, text)."""
    return Conversation(
        id=cid,
        title="t",
        participants=sorted({r[1] for r in rows}),
        is_group=group,
        messages=[Message(s, t, T0 + dt.timedelta(minutes=m)) for m, s, t in rows],
    )


def turns(example: Example) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in example.messages[1:]]


def test_merges_runs_and_alternates() -> None:
    (ex,) = build_examples(
        [
            conv(
                (0, "Bo", "hi"),
                (1, "Bo", "you there?"),
                (2, "Ana", "yes"),
                (3, "Ana", "what's up"),
                (4, "Bo", "lunch?"),
                (5, "Ana", "sure"),
            )
        ],
        "Ana",
    )
    assert ex.conversation_id == "c1#2024-01-01T12:00:00"
    assert ex.messages[0] == SYSTEM_ANA
    assert turns(ex) == [
        ("user", "hi\nyou there?"),
        ("assistant", "yes\nwhat's up"),
        ("user", "lunch?"),
        ("assistant", "sure"),
    ]


def test_sessions_split_on_gap_and_openers_and_unanswered_turns_are_left_out() -> None:
    stats = BuildStats()
    c = conv(
        (0, "Ana", "morning"),  # opens the session: nothing to answer
        (1, "Bo", "hey"),
        (2, "Ana", "hey you"),
        (3, "Bo", "bye"),  # nobody answers before the silence
        (3 + 6 * 60, "Bo", "exactly six hours later: same session"),
        (4 + 6 * 60, "Ana", "ok"),
        (5 + 12 * 60, "Bo", "new day"),
        (6 + 12 * 60, "Ana", "hi again"),
    )
    examples = list(build_examples([c], "Ana", stats=stats))
    assert [e.conversation_id for e in examples] == [
        "c1#2024-01-01T12:00:00",
        "c1#2024-01-02T00:05:00",
    ]
    assert turns(examples[0]) == [
        ("user", "hey"),
        ("assistant", "hey you"),
        ("user", "bye\nexactly six hours later: same session"),
        ("assistant", "ok"),
    ]
    assert turns(examples[1]) == [("user", "new day"), ("assistant", "hi again")]
    assert (stats.sessions, stats.openers, stats.examples, stats.me_messages) == (2, 1, 2, 4)
    assert [e.conversation_id for e in build_examples([c], "Ana", gap_hours=1)] == [
        "c1#2024-01-01T12:00:00",
        "c1#2024-01-01T18:03:00",
        "c1#2024-01-02T00:05:00",
    ]


def test_group_turns_are_prefixed_with_the_speaker() -> None:
    (ex,) = build_examples(
        [
            conv(
                (0, "Bo", "who's in?"),
                (1, "Cy", "me"),
                (2, "Cy", "if dry"),
                (3, "Bo", "Ana?"),
                (4, "Ana", "in"),
                group=True,
            )
        ],
        "Ana",
    )
    assert turns(ex) == [("user", "Bo: who's in?\nCy: me\nif dry\nBo: Ana?"), ("assistant", "in")]


def test_windows_are_non_overlapping_chunks_ending_with_the_assistant() -> None:
    rows = []
    for i in range(5):
        rows += [(2 * i, "Bo", f"q{i}"), (2 * i + 1, "Ana", f"a{i}")]
    c = conv(*rows)
    for max_turns in (4, 5):  # an odd limit rounds down: windows must end with a reply
        examples = list(build_examples([c], "Ana", max_turns=max_turns))
        assert [turns(e) for e in examples] == [
            [("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("assistant", "a1")],
            [("user", "q2"), ("assistant", "a2"), ("user", "q3"), ("assistant", "a3")],
            [("user", "q4"), ("assistant", "a4")],
        ]
        assert {e.conversation_id for e in examples} == {"c1#2024-01-01T12:00:00"}
    with pytest.raises(ImportErrorMessage, match="--max-turns must be at least 2"):
        list(build_examples([c], "Ana", max_turns=1))


def test_system_prompt_names_the_sender_as_spelled_in_the_export() -> None:
    c = conv((0, "Bo", "hi"), (1, "Ana Lima", "hey"))
    (ex,) = build_examples([c], "  ana   LIMA ")
    assert ex.messages[0]["content"] == DEFAULT_SYSTEM.format(me="Ana Lima")
    (ex,) = build_examples([c], "ana lima", system="Be {me}. Short texts.")
    assert ex.messages[0] == {"role": "system", "content": "Be Ana Lima. Short texts."}


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("Ana Lima", True),
        ("river.song", True),
        ("@zoemartin", True),  # a handle still names someone
        ("张伟", True),
        ("me", False),  # an X archive without account.js, as the README's --me me
        (" ME ", False),
        ("You", False),
        ("4242", False),  # a platform id
        ("+1 (555) 010-0199", False),  # a WhatsApp contact never saved
        ("<PHONE>", False),  # a name --mask-pii masked whole
        ("", False),
    ],
)
def test_default_prompt_is_neutral_without_a_real_name(name: str, named: bool) -> None:
    assert names_a_person(name) is named
    want = DEFAULT_SYSTEM.format(me=name) if named else NEUTRAL_SYSTEM
    assert system_prompt(name) == want
    # A --system of your own is filled in as written, whatever the name.
    assert system_prompt(name, "Be {me}.") == f"Be {name}."


def test_mask_pii_masks_a_name_in_the_prompt() -> None:
    c = conv((0, "Bo", "hi"), (1, "Ana bo@example.com", "hey"))
    (ex,) = build_examples([c], "Ana bo@example.com", mask_pii=True)
    assert ex.messages[0]["content"] == DEFAULT_SYSTEM.format(me="Ana <EMAIL>")


def test_match_me_by_name_alias_or_id() -> None:
    m = Message("Ana Lima", "x", T0, sender_id="user42", aliases=("ana_l", "Nana"))
    assert match_me(m, "ana lima")
    assert match_me(m, "USER42")
    assert match_me(m, "nana")
    assert not match_me(m, "Ana")


def test_me_not_found_lists_the_most_frequent_senders() -> None:
    c = conv(
        (0, "Bo", "a"),
        (1, "Cy", "b"),
        (2, "Bo", "c"),
        (3, "Bo", "d"),
        (4, "Cy", "e"),
        (5, "Di", "f"),
    )
    with pytest.raises(ImportErrorMessage) as info:
        list(build_examples([c], "Ana"))
    assert str(info.value) == (
        "--me 'Ana' matches no sender; most frequent senders: Bo (3), Cy (2), Di (1)"
    )


def test_no_reply_at_all_is_an_error() -> None:
    with pytest.raises(ImportErrorMessage, match="^No examples: Ana never replied"):
        list(build_examples([conv((0, "Ana", "anyone?"), (1, "Bo", "no"))], "Ana"))


def test_mask_pii() -> None:
    assert mask_pii(
        "mail ana.lima+x@mail.example.org or call +1 (555) 010-0199 / 0612345678, "
        "see https://example.com/a?b=1 and www.example.net. Meet 2024-05-06 at 10:30, "
        "order AB1234567, 3 pizzas"
    ) == (
        "mail <EMAIL> or call <PHONE> / <PHONE>, see <URL> and <URL>. Meet 2024-05-06 at 10:30, "
        "order AB1234567, 3 pizzas"
    )


def test_mask_pii_in_examples() -> None:
    (ex,) = build_examples(
        [conv((0, "Bo", "my number is 555 010 0199"), (1, "Ana", "mine: ana@example.com"))],
        "Ana",
        mask_pii=True,
    )
    assert turns(ex) == [("user", "my number is <PHONE>"), ("assistant", "mine: <EMAIL>")]


def test_write_jsonl_and_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "ana.jsonl"
    examples = [
        Example(
            "t#0",
            [
                SYSTEM_ANA,
                {"role": "user", "content": "olá"},
                {"role": "assistant", "content": "oi 😀"},
            ],
        ),
        Example(
            "t#1",
            [SYSTEM_ANA, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        ),
    ]
    assert write_jsonl(examples, out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == json.dumps({"messages": examples[0].messages}, ensure_ascii=False)
    assert "olá" in lines[0]
    assert [json.loads(line) for line in lines] == [{"messages": e.messages} for e in examples]
    assert (tmp_path / "sub" / "ana.jsonl.conversations").read_text() == "t#0\nt#1\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["ana.jsonl", "ana.jsonl.conversations"]


def test_write_jsonl_writes_half_an_emoji_as_u_fffd(tmp_path: Path) -> None:
    # 2,500 examples: three write batches, the broken ones in the second and the last.
    def example(i: int) -> Example:
        broken = i in (1500, 1501, 2400)
        text = f"reply {i}" + (" \ud83d" if broken else " 😀")
        chat = "chat \udc00" if i == 2400 else "chat"
        msgs = [SYSTEM_ANA, {"role": "user", "content": "hi"}]
        return Example(f"{chat}#{i}", [*msgs, {"role": "assistant", "content": text}])

    out = tmp_path / "ana.jsonl"
    stats = BuildStats()
    assert write_jsonl(map(example, range(2500)), out, stats) == 2500
    assert stats.repaired == 3
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2500
    replies = [json.loads(line)["messages"][-1]["content"] for line in lines]
    assert replies[1499:1502] == ["reply 1499 😀", "reply 1500 \ufffd", "reply 1501 \ufffd"]
    assert replies[2400] == "reply 2400 \ufffd"
    ids = (tmp_path / "ana.jsonl.conversations").read_text(encoding="utf-8").splitlines()
    assert ids[2399:2401] == ["chat#2399", "chat \ufffd#2400"]


def test_write_jsonl_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    out = tmp_path / "ana.jsonl"

    def failing() -> Iterator[Example]:
        yield Example("t#0", [SYSTEM_ANA])
        raise ImportErrorMessage("boom")

    with pytest.raises(ImportErrorMessage):
        write_jsonl(failing(), out)
    assert list(tmp_path.iterdir()) == []


def test_write_jsonl_keeps_an_older_output_on_error(tmp_path: Path) -> None:
    out = tmp_path / "ana.jsonl"
    out.write_text("old\n")

    def failing() -> Iterator[Example]:
        raise ImportErrorMessage("boom")
        yield  # pragma: no cover

    with pytest.raises(ImportErrorMessage):
        write_jsonl(failing(), out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ana.jsonl"]


ZOE_SYSTEM = {
    "role": "system",
    "content": "You are Zoë Martín. Reply to text messages the way Zoë Martín would: same voice, "
    "same length, same habits.",
}


def test_threads_left_out_whole_are_skipped_not_counted() -> None:
    # Every counted thread has a conversation, so threads never outnumber conversations.
    bot = conv((0, "Ana", "/weather"), cid="bot")
    bot.messages.clear()
    bot.drop("bot chat", 2)
    bot.skipped = "bot chat"
    photos = conv(cid="photos")
    photos.drop("media", 3)
    stats = BuildStats()
    examples = list(
        build_examples([bot, conv((0, "Bo", "hi"), (1, "Ana", "hey")), photos], "Ana", stats=stats)
    )
    assert len(examples) == 1
    assert (stats.threads, stats.sessions) == (1, 1)
    assert stats.skipped == {"bot chat": 1, "no text": 1}
    assert stats.dropped == {"media": 3, "bot chat": 2}


def test_messenger_fixture_end_to_end() -> None:
    stats = BuildStats()
    examples = list(
        build_examples(load("messenger", FIXTURES / "messenger"), "ZOË MARTÍN", stats=stats)
    )
    assert [e.conversation_id for e in examples] == [
        "inbox/hikingcrew_2002#2024-04-10T18:01:00",
        "inbox/samrivera_1001#2024-03-01T09:00:00",
        "inbox/samrivera_1001#2024-03-01T20:00:00",
    ]
    assert [e.messages for e in examples] == [
        [
            ZOE_SYSTEM,
            {
                "role": "user",
                "content": "Priya Nair: who's in for saturday?\nSam Rivera: me!\n"
                "if it doesn't rain",
            },
            {"role": "assistant", "content": "count me in 🙌"},
            {"role": "user", "content": "Priya Nair: meet at 8 at the trailhead"},
            {"role": "assistant", "content": "deal"},
        ],
        [
            ZOE_SYSTEM,
            {"role": "user", "content": "barely ☕\nlook at this view"},
            {"role": "assistant", "content": "wow, jealous 😍\nwhere is that?"},
            {"role": "user", "content": "Lake Tahoe, the café by the pier"},
            {"role": "assistant", "content": "I'm going next summer, no excuses"},
        ],
        [
            ZOE_SYSTEM,
            {"role": "user", "content": "dinner thursday?"},
            {"role": "assistant", "content": "yes!! 7pm at Luca's"},
            {"role": "user", "content": "perfect, call me at +1 555 010 0199 if late"},
            {"role": "assistant", "content": "will do. or email zoe@example.com"},
        ],
    ]
    assert (stats.threads, stats.messages, stats.me_messages, stats.openers) == (3, 19, 8, 1)
    assert dict(stats.dropped) == {
        "media": 4,
        "sticker": 1,
        "reaction": 1,
        "link": 1,
        "unsent": 1,
        "call": 1,
        "system": 3,
    }


@pytest.mark.parametrize(("gap", "shown"), [(0, "0"), (-1, "-1"), (float("nan"), "nan")])
def test_gap_hours_must_be_more_than_zero(gap: float, shown: str) -> None:
    c = conv((0, "Bo", "hi"), (1, "Ana", "hey"))
    with pytest.raises(ImportErrorMessage) as info:
        list(build_examples([c], "Ana", gap_hours=gap))
    assert str(info.value) == f"--gap-hours must be more than 0, got {shown}"


@pytest.mark.parametrize("gap", [float("inf"), 1e300])
def test_a_gap_too_long_for_a_timedelta_never_splits(gap: float) -> None:
    year = 60 * 24 * 400  # minutes
    c = conv((0, "Bo", "hi"), (1, "Ana", "hey"), (year, "Bo", "a year on"), (year + 1, "Ana", "ok"))
    (ex,) = build_examples([c], "Ana", gap_hours=gap)
    assert turns(ex) == [
        ("user", "hi"),
        ("assistant", "hey"),
        ("user", "a year on"),
        ("assistant", "ok"),
    ]


def test_one_session_conversation_is_never_split_on_silences() -> None:
    c = conv((0, "Bo", "write a thread"), (1, "Ana", "post 1"), (60 * 48, "Ana", "post 2"))
    stats = BuildStats()
    assert [turns(e) for e in build_examples([c], "Ana", stats=stats)] == [
        [("user", "write a thread"), ("assistant", "post 1")]
    ]
    assert (stats.sessions, stats.openers) == (2, 1)  # "post 2" opened a session of its own
    c.one_session = True
    stats = BuildStats()
    (ex,) = build_examples([c], "Ana", stats=stats)
    assert ex.conversation_id == "c1#2024-01-01T12:00:00"
    assert turns(ex) == [("user", "write a thread"), ("assistant", "post 1\npost 2")]
    assert (stats.sessions, stats.openers) == (1, 0)


def test_mask_pii_also_masks_names_in_group_prefixes_and_the_prompt() -> None:
    # WhatsApp names a contact that was never saved by its phone number.
    c = conv(
        (0, "+44 7700 900123", "who's in?"),
        (1, "Bo", "me, mail bo@example.com"),
        (2, "+1 555 010 0199", "hi all"),
        group=True,
    )
    (ex,) = build_examples([c], "+1 555 010 0199", mask_pii=True)
    # A number is no name: the neutral prompt, so no number can leak into it either.
    assert ex.messages[0]["content"] == NEUTRAL_SYSTEM
    assert turns(ex) == [
        ("user", "<PHONE>: who's in?\nBo: me, mail <EMAIL>"),
        ("assistant", "hi all"),
    ]
    (plain,) = build_examples([c], "+1 555 010 0199")
    assert plain.messages[0]["content"] == NEUTRAL_SYSTEM
    assert turns(plain)[0] == ("user", "+44 7700 900123: who's in?\nBo: me, mail bo@example.com")


def test_a_chat_exported_twice_is_written_once_under_stable_ids() -> None:
    """Two exports of one chat covering overlapping periods: same ids, no repeated examples."""
    day = 24 * 60
    older = conv(
        *[r for d in range(0, 3) for r in ((d * day, "Bo", f"q{d}"), (d * day + 1, "Ana", f"a{d}"))]
    )
    newer = conv(
        *[r for d in range(1, 5) for r in ((d * day, "Bo", f"q{d}"), (d * day + 1, "Ana", f"a{d}"))]
    )
    stats = BuildStats()
    examples = list(build_examples([older, newer], "Ana", stats=stats))
    assert [(e.conversation_id, turns(e)) for e in examples] == [
        (f"c1#2024-01-0{d + 1}T12:00:00", [("user", f"q{d}"), ("assistant", f"a{d}")])
        for d in range(5)
    ]
    assert (stats.examples, stats.duplicates) == (5, 2)
    # the same words in another session (another day) are not a duplicate
    again = conv((0, "Bo", "q"), (1, "Ana", "a"), (day, "Bo", "q"), (day + 1, "Ana", "a"))
    assert len(list(build_examples([again], "Ana"))) == 2


@pytest.mark.parametrize(
    ("bo", "ana"),
    [
        ("see you  \nat 8", "ok "),  # spaces ending a line, or the text
        ("see you\r\nat 8", "\tok"),  # a Windows line break, a tab before the text
        (" see you \t\nat 8\n", "ok\n"),
    ],
)
def test_copies_that_differ_only_in_blanks_around_lines_are_duplicates(bo: str, ana: str) -> None:
    stats = BuildStats()
    one = conv((0, "Bo", "see you\nat 8"), (1, "Ana", "ok"))
    other = conv((0, "Bo", bo), (1, "Ana", ana))
    (kept,) = build_examples([one, other], "Ana", stats=stats)
    assert turns(kept) == [("user", "see you\nat 8"), ("assistant", "ok")]
    assert stats.duplicates == 1


def test_spaces_between_words_still_make_another_example() -> None:
    # Spacing inside a line is what someone typed; only blanks that end a line are trimmed
    # by tools and editors. Same session and place, so only the words tell them apart.
    one = conv((0, "Bo", "see you at 8"), (1, "Ana", "ok"))
    other = conv((0, "Bo", "see  you at 8"), (1, "Ana", "ok"))
    assert len(list(build_examples([one, other], "Ana"))) == 2


def pairs(*texts: str) -> Conversation:
    """A 1:1 chat of Bo's and Ana's texts in turn, a minute apart."""
    return conv(*[(i, "Bo" if i % 2 == 0 else "Ana", t) for i, t in enumerate(texts)])


def tokens_of(example: Example) -> int:
    from phischer.tokens import count_messages_tokens

    return count_messages_tokens(example.messages)


def test_an_example_over_the_token_limit_loses_its_oldest_pairs() -> None:
    long = "word " * 300  # 300 tokens
    stats = BuildStats()
    (ex,) = build_examples(
        [pairs(long, "a1", long, "a2", "short", "a3")], "Ana", max_tokens=500, stats=stats
    )
    # Both long turns would be 600+ tokens: the oldest pair goes, the rest still starts with
    # a user turn and ends with the reply, and fits.
    assert turns(ex) == [
        ("user", long),
        ("assistant", "a2"),
        ("user", "short"),
        ("assistant", "a3"),
    ]
    assert tokens_of(ex) <= 500
    assert (stats.examples, stats.shortened, stats.too_long) == (1, 1, 0)


def test_an_example_whose_last_pair_alone_is_over_the_limit_is_left_out() -> None:
    stats = BuildStats()
    big = pairs("word " * 600, "a1")
    small = conv((0, "Bo", "hi"), (1, "Ana", "hey"), cid="c2")
    (ex,) = build_examples([big, small], "Ana", max_tokens=500, stats=stats)
    assert turns(ex) == [("user", "hi"), ("assistant", "hey")]
    assert (stats.examples, stats.shortened, stats.too_long) == (1, 0, 1)
    with pytest.raises(ImportErrorMessage, match="every one is over OpenAI's 500-token limit"):
        list(build_examples([big], "Ana", max_tokens=500))


def test_characters_of_several_tokens_each_are_counted_not_assumed() -> None:
    # U+13000 is four tokens: 200 of them are 800 tokens in 200 characters, so a bound of
    # one token per character would let this example through whole.
    glyphs = "\U00013000" * 200
    stats = BuildStats()
    (ex,) = build_examples([pairs(glyphs, "a1", "q", "a2")], "Ana", max_tokens=500, stats=stats)
    assert turns(ex) == [("user", "q"), ("assistant", "a2")]
    assert stats.shortened == 1


def test_an_example_just_within_the_limit_is_kept_whole() -> None:
    stats = BuildStats()
    (whole,) = build_examples([pairs("word " * 300, "a1", "q", "a2")], "Ana", stats=stats)
    limit = tokens_of(whole)
    (ex,) = build_examples([pairs("word " * 300, "a1", "q", "a2")], "Ana", max_tokens=limit)
    assert ex.messages == whole.messages
    (cut,) = build_examples([pairs("word " * 300, "a1", "q", "a2")], "Ana", max_tokens=limit - 1)
    assert turns(cut) == [("user", "q"), ("assistant", "a2")]


def test_the_same_words_twice_in_one_session_are_two_examples() -> None:
    stats = BuildStats()
    c = conv(
        (0, "Bo", "ok"),
        (1, "Ana", "ok"),
        (2, "Bo", "night"),
        (3, "Ana", "night x"),
        (4, "Bo", "ok"),
        (5, "Ana", "ok"),
    )
    examples = list(build_examples([c], "Ana", max_turns=2, stats=stats))
    assert [turns(e) for e in examples] == [
        [("user", "ok"), ("assistant", "ok")],
        [("user", "night"), ("assistant", "night x")],
        [("user", "ok"), ("assistant", "ok")],
    ]
    assert stats.duplicates == 0


@pytest.mark.parametrize(("group", "mask"), [(False, False), (True, False), (False, True)])
def test_line_breaks_written_on_windows_or_old_macs_are_newlines(group: bool, mask: bool) -> None:
    # Any format can hold them (a JSON string of Telegram, Messenger or X keeps what was
    # typed): one rule, on the 1:1 fast path and on the group / --mask-pii path alike.
    c = conv(
        (0, "Bo", "hi\r\nthere"), (1, "Bo", "you\rok?"), (2, "Ana", "yes\r\n\r\nyou?"), group=group
    )
    (ex,) = build_examples([c], "Ana", mask_pii=mask)
    bo = "Bo: " if group else ""
    assert turns(ex) == [("user", f"{bo}hi\nthere\nyou\nok?"), ("assistant", "yes\n\nyou?")]


@pytest.mark.parametrize("system", ["", "   "])
def test_a_blank_system_prompt_is_refused(system: str) -> None:
    with pytest.raises(ImportErrorMessage, match="--system is blank"):
        list(build_examples([conv((0, "Bo", "hi"), (1, "Ana", "yo"))], "Ana", system=system))


@pytest.mark.parametrize(
    "text",
    [
        "meet 2024-01-02 10:30",
        "date 31.12.2023 21:15",
        "on 12-25-2024 8 pm",
        "10.30-11.45",
        "20240102",
        "call 2024 2025 2026",
        "1 000 000 euros",
        "costs $1 234 567",
        "v10.0.19041.1234",
        "ip 192.168.1.100",
        "ISBN 978-3-16-148410-0",
        "order AB1234567, 3 pizzas",
        "order 1234567 is late",
        "order #123456789",
        "Order ID: 112-4567890-1234567",
        "tracking number: 1234 5678 90",
        "ref 20240313, invoice no. 1234-567-890",
        "version 10.0.19041",
        "paid $1,299.99 on 2024-03-13 at 12:30",
        "node.js and example.com, and/or 1.5/2 km/h",
    ],
)
def test_mask_pii_leaves_other_numbers(text: str) -> None:
    assert mask_pii(text) == text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("555-123-4567", "<PHONE>"),
        ("+44 7911 123456", "<PHONE>"),
        ("06 12 34 56 78", "<PHONE>"),
        ("06.12.34.56.78", "<PHONE>"),
        ("mi número es 612 345 678.", "mi número es <PHONE>."),
        ("(555) 123 4567", "<PHONE>"),
        ("tel 555.123.4567", "tel <PHONE>"),
        ("see WWW.Example.com now", "see <URL> now"),
        ("Www.example.com", "<URL>"),
        ("(415) 555-2671 ext. 42, or 415.555.2671x7", "<PHONE>, or <PHONE>"),
        ("+1 415 555 2671 Extension 9", "<PHONE>"),
        ("+49 (0)30 1234567 or 0044 20 7946 0958", "<PHONE> or <PHONE>"),
        ("caller ID 0612345678, in case: 555 010 0199", "caller ID <PHONE>, in case: <PHONE>"),
        ("mail a.b+tag@mail.sub.example.co.uk.", "mail <EMAIL>."),
        ("see example.com/x, bit.ly/3xYz!", "see <URL>, <URL>!"),
        ("(see https://example.com/a?b=1).", "(see <URL>)."),
        ("go to sub.example.co.uk/a/b?c=d#e and www.example.net.", "go to <URL> and <URL>."),
    ],
)
def test_mask_pii_masks_numbers_and_urls_as_written(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


def _discord_dm(names: list[tuple[str, str, str]]) -> dict:
    # DiscordChatExporter's JSON for a DM: (author id, username, text) per message.
    return {
        "guild": {"id": "0", "name": "Direct Messages"},
        "channel": {"id": "1", "type": "DirectTextChat", "category": "Private", "name": "kai"},
        "messages": [
            {
                "id": str(i),
                "type": "Default",
                "timestamp": f"2024-03-02T10:0{i}:00+00:00",
                "content": text,
                "author": {"id": sid, "name": name, "nickname": None, "isBot": False},
                "attachments": [],
                "embeds": [],
                "stickers": [],
                "mentions": [],
            }
            for i, (sid, name, text) in enumerate(names)
        ],
    }


def _telegram_chat(names: list[tuple[str, str, str]]) -> dict:
    # A Telegram Desktop personal chat: (from_id, from, text) per message.
    return {
        "name": "Priya",
        "type": "personal_chat",
        "id": 1,
        "messages": [
            {
                "id": i,
                "type": "message",
                "date": f"2024-02-10T10:0{i}:00",
                "date_unixtime": str(1707559200 + 60 * i),
                "from": name,
                "from_id": sid,
                "text": text,
                "text_entities": [],
            }
            for i, (sid, name, text) in enumerate(names)
        ],
    }


# One-to-one chats whose other person (or you) is written under two names: one person each.
RENAMED = {
    # The contact renamed between messages: Telegram writes each message's name of the time.
    "telegram": (
        "result.json",
        json.dumps(
            _telegram_chat(
                [
                    ("user1", "Priya", "hi"),
                    ("user2", "Leo", "hey"),
                    ("user1", "Priya Nair", "new name"),
                    ("user2", "Leo", "nice"),
                ]
            )
        ),
        "Leo",
    ),
    # A username changed between the two exports of one DM (its parts read together).
    "discord": (
        "Direct Messages - Private - kai [1].json",
        json.dumps(
            _discord_dm(
                [
                    ("11", "kai_m", "hi"),
                    ("22", "leo", "hey"),
                    ("11", "kai.m", "new name"),
                    ("22", "leo", "nice"),
                ]
            )
        ),
        "leo",
    ),
    # Your name typed with a combining diaeresis on one phone (NFD) and as one letter (NFC).
    "whatsapp": (
        "WhatsApp Chat with Priya.txt",
        "01/03/2024, 10:00 - Priya: hi\n"
        "01/03/2024, 10:01 - Zoe\u0308: hey\n"
        "01/03/2024, 10:02 - Priya: new name\n"
        "01/03/2024, 10:03 - Zo\u00eb: nice\n",
        "Zoë",
    ),
}


@pytest.mark.parametrize("fmt", sorted(RENAMED))
def test_a_one_to_one_chat_under_two_names_is_not_a_group(tmp_path: Path, fmt: str) -> None:
    # Counted by name it had three "people", so the other person's turns were prefixed
    # "Priya Nair: " as in a group, a shape the served (one-to-one) thread never has.
    name, text, me = RENAMED[fmt]
    (tmp_path / name).write_text(text, encoding="utf-8")
    (ex,) = build_examples(load(fmt, tmp_path / name), me)
    assert turns(ex) == [
        ("user", "hi"),
        ("assistant", "hey"),
        ("user", "new name"),
        ("assistant", "nice"),
    ]
