"""X/Twitter importer: tweets.js + parts, retweets, entities, reply prefixes, self-threads."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from phischer.dataset import build_examples
from phischer.import_run import run_import
from phischer.importers import ImportErrorMessage, load
from phischer.importers.senders import one_name_per_sender
from phischer.importers.topic_prompt import key_phrases, topic_prompt
from phischer.importers.twitter import PROMPT_SENDER

ARCHIVE = Path(__file__).parent / "fixtures" / "twitter"
ZOE = "Zoë Martín"
# The fixture archive's posts and self-threads, in time order.
POSTS = ["twitter/100", "twitter/102", "twitter/103", "twitter/107", "twitter/108"]


def _convs(path: Path = ARCHIVE) -> list:
    return list(load("twitter", path))


def test_posts_become_prompted_conversations_in_time_order() -> None:
    convs = _convs()
    assert [c.id for c in convs] == POSTS
    assert [[(m.sender, m.text) for m in c.messages] for c in convs] == [
        [
            (
                PROMPT_SENDER,
                "Write a post about sourdough starter guide, fermentation, #baking, #sourdough.",
            ),
            # &amp; unescaped, the trailing media link gone
            (
                ZOE,
                "Finally finished the sourdough starter guide. Fermentation is wild & slow "
                "#baking #sourdough",
            ),
        ],
        [
            # the post it answered is not in the archive: the prompt names whom it replies to
            (PROMPT_SENDER, "Write a reply to @bakerbob about thanks, perfect."),
            (ZOE, "thanks, the crumb came out perfect!"),  # "@bakerbob @flourpower " stripped
        ],
        [
            (PROMPT_SENDER, "Write a thread about short thread, bagels failed."),
            (ZOE, "A short thread on why my bagels failed 🧵"),
            (ZOE, "1/ the water was too cold <sigh>"),
            (ZOE, "2/ I skipped the boil. Never again https://example.com/bagels"),
        ],
        [
            (PROMPT_SENDER, "Write a post about way."),
            (ZOE, "This is the way"),  # the quoted post's link is gone
        ],
        [
            (PROMPT_SENDER, "Write a post about shoutout, rye tips, #rye, @flourpower."),
            (ZOE, "Shoutout to @flourpower for the rye tips #rye"),
        ],
    ]
    thread = convs[2]
    assert thread.messages[0].timestamp == thread.messages[1].timestamp
    assert thread.messages[1].timestamp == dt.datetime(2023, 5, 3, 19, 0)
    assert thread.messages[1].aliases == ("zoemartin", "@zoemartin")
    assert thread.messages[1].sender_id == "4242"


def test_drops_are_counted_once() -> None:
    convs = _convs()
    total: dict[str, int] = {}
    for c in convs:
        for k, v in c.dropped.items():
            total[k] = total.get(k, 0) + v
    assert total == {"retweet": 1, "media": 1}


def test_builder_makes_prompt_to_post_examples() -> None:
    examples = list(build_examples(_convs(), "@zoemartin"))
    assert len(examples) == 5
    assert examples[2].conversation_id == "twitter/103#2023-05-03T19:00:00"
    assert examples[2].messages == [
        {
            "role": "system",
            "content": "You are Zoë Martín. Reply to text messages the way Zoë Martín would: "
            "same voice, same length, same habits.",
        },
        {"role": "user", "content": "Write a thread about short thread, bagels failed."},
        {
            "role": "assistant",
            "content": "A short thread on why my bagels failed 🧵\n1/ the water was too cold <sigh>"
            "\n2/ I skipped the boil. Never again https://example.com/bagels",
        },
    ]


def test_zip_and_single_file(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "twitter-2024.zip", "w") as zf:
        for p in sorted(ARCHIVE.rglob("*.js")):
            zf.write(p, p.relative_to(ARCHIVE).as_posix())
    assert [c.messages for c in _convs(tmp_path / "twitter-2024.zip")] == [
        c.messages for c in _convs()
    ]
    # tweets.js alone still finds account.js beside it
    (first, *_rest) = _convs(ARCHIVE / "data" / "tweets.js")
    assert first.messages[1].sender == ZOE


@pytest.mark.parametrize("name", ["tweets.js", "tweets-part1.js"])
def test_one_tweets_file_reads_its_sibling_parts(tmp_path: Path, name: str) -> None:
    # The README: "Pass … data/tweets.js itself; tweets-part1.js, … are read too". The
    # self-thread's replies are in tweets-part1.js: without it the thread is cut short.
    folder = [(c.id, c.messages) for c in _convs()]
    assert [(c.id, c.messages) for c in _convs(ARCHIVE / "data" / name)] == folder
    assert len(folder) == 5
    # Same folder and patterns as a folder import: files of another kind are not read.
    data = tmp_path / "data"
    shutil.copytree(ARCHIVE / "data", data)
    (data / "deleted-tweets.js").write_text(
        'window.YTD.deleted_tweets.part0 = [{"tweet": {"id_str": "900", "created_at": '
        '"Mon Jan 02 10:00:00 +0000 2017", "full_text": "deleted post"}}]'
    )
    assert [(c.id, c.messages) for c in _convs(data / name)] == folder
    # A file that is not a tweets file is refused, whatever is beside it.
    with pytest.raises(ImportErrorMessage, match="No tweets or direct messages in"):
        _convs(data / "deleted-tweets.js")


def test_without_account_js_the_owner_is_me(tmp_path: Path) -> None:
    shutil.copy(ARCHIVE / "data" / "tweets.js", tmp_path / "tweets.js")
    convs = _convs(tmp_path / "tweets.js")
    assert {m.sender for c in convs for m in c.messages} == {"me", PROMPT_SENDER}


def test_older_tweet_js_without_wrapper(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tweet.js").write_text(
        'window.YTD.tweet.part0 = [{"id_str": "1", "created_at": "Mon Jan 02 10:00:00 +0000 '
        '2017", "full_text": "Snow day #winter"}]'
    )
    (conv,) = _convs(tmp_path)
    assert [m.text for m in conv.messages] == [
        "Write a post about snow day, #winter.",
        "Snow day #winter",
    ]


@pytest.mark.parametrize(
    ("text", "kwargs", "prompt"),
    [
        ("lol ok", {}, "Write a post."),
        (
            "New album out Friday!! #music @label",
            {},
            "Write a post about album, friday, #music, @label.",
        ),
        ("agreed", {"reply_to": "bob"}, "Write a reply to @bob about agreed."),
        ("Why I left my job in tech", {"thread": True}, "Write a thread about left, tech."),
    ],
)
def test_topic_prompt_rule(text: str, kwargs: dict, prompt: str) -> None:
    assert topic_prompt(text, **kwargs) == prompt


def test_key_phrases_prefer_longer_runs() -> None:
    text = "My grandmother's secret tomato sauce recipe, finally written down"
    assert key_phrases(text) == ["grandmother's secret tomato", "written"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportErrorMessage, match="No tweets or direct messages in"):
        _convs(tmp_path)
    (tmp_path / "tweets.js").write_text('window.YTD.tweets.part0 = [ {"tweet" : {"id_str"')
    with pytest.raises(ImportErrorMessage, match=r"^Truncated JSON in .*tweets.js: "):
        _convs(tmp_path)


def test_self_thread_posted_days_apart_is_still_one_example(tmp_path: Path) -> None:
    # --gap-hours splits chats on silences; a self-thread answers one prompt however long
    # after the first post the others were added, so it is never cut.
    data = tmp_path / "data"
    shutil.copytree(ARCHIVE / "data", data)
    (data / "tweets-part2.js").write_text(
        'window.YTD.tweets.part2 = [{"tweet": {"id_str": "200", "created_at": "Sat May 06 '
        '19:00:00 +0000 2023", "full_text": "3/ three days later: I boiled them. Perfect.", '
        '"in_reply_to_status_id_str": "105", "in_reply_to_screen_name": "zoemartin"}}]'
    )
    convs = _convs(tmp_path)
    thread = next(c for c in convs if c.id == "twitter/103")
    assert thread.one_session
    examples = [
        e
        for e in build_examples(convs, "zoemartin")
        if e.conversation_id == "twitter/103#2023-05-03T19:00:00"
    ]
    assert [e.messages[1:] for e in examples] == [
        [
            {"role": "user", "content": "Write a thread about short thread, bagels failed."},
            {
                "role": "assistant",
                "content": "A short thread on why my bagels failed 🧵\n1/ the water was too cold "
                "<sigh>\n2/ I skipped the boil. Never again https://example.com/bagels\n"
                "3/ three days later: I boiled them. Perfect.",
            },
        ]
    ]


def _archive(root: Path, **files: list[dict]) -> Path:
    """An archive with account.js and, per keyword (tweets_part1 -> tweets-part1.js), posts."""
    data = root / "data"
    data.mkdir(parents=True)
    shutil.copy(ARCHIVE / "data" / "account.js", data / "account.js")
    for stem, tweets in files.items():
        body = json.dumps([{"tweet": t} for t in tweets])
        (data / f"{stem.replace('_', '-')}.js").write_text(
            f"window.YTD.{stem.split('_part')[0]}.part0 = {body}", encoding="utf-8"
        )
    return data


def _post(tid: str, text: str, **extra: object) -> dict:
    """A post of tweets.js made at 12:00 on 4 March 2024 plus `tid` minutes."""
    return {"id_str": tid, "created_at": f"Mon Mar 04 12:{int(tid) % 60:02d}:00 +0000 2024",
            "full_text": text, **extra}  # fmt: skip


BOB_CAROL = _post(
    "1",
    "@bob @carol you should both come to the bakery tour",
    # X added "@bob " (the reply's target) and hides it; "@carol" was typed
    display_text_range=["5", "51"],
    in_reply_to_status_id_str="9",
    in_reply_to_screen_name="bob",
    entities={"user_mentions": [{"screen_name": "bob", "id_str": "50"},
                                {"screen_name": "carol", "id_str": "60"}]},
)  # fmt: skip


def test_a_mention_typed_at_the_start_of_a_reply_is_kept(tmp_path: Path) -> None:
    # The cut is where X starts showing the text, in code points: the emoji counts once.
    emoji = _post("2", "@bob 🙂 @carol too", display_text_range=["5", "17"],
                  in_reply_to_status_id_str="8", in_reply_to_screen_name="bob")  # fmt: skip
    _archive(tmp_path, tweets=[BOB_CAROL, emoji])
    assert [[m.text for m in c.messages] for c in _convs(tmp_path)] == [
        [
            "Write a reply to @bob about bakery tour, @carol.",
            "@carol you should both come to the bakery tour",
        ],
        ["Write a reply to @bob about @carol.", "🙂 @carol too"],
    ]


def test_a_long_reply_keeps_a_typed_mention_too(tmp_path: Path) -> None:
    words = " you should both come to the bakery tour, it starts at nine" * 6
    cut = _post(
        "1",
        ("@bob @carol" + words)[:270] + "… https://t.co/more",
        display_text_range=["5", "272"],
        in_reply_to_status_id_str="9",
        in_reply_to_screen_name="bob",
        entities={"urls": [{"url": "https://t.co/more",
                            "expanded_url": "https://twitter.com/i/web/status/1"}]},
    )  # fmt: skip
    other = dict(cut, id_str="2", created_at="Tue Mar 05 12:00:00 +0000 2024")
    data = _archive(tmp_path, tweets=[cut, other])
    notes = [
        # the note begins with the same hidden "@bob ": the range still applies
        {"createdAt": "2024-03-04T12:01:00.000Z", "core": {"text": "@bob @carol" + words}},
        # a note without the @names: the range would cut its words, the pattern is used
        {"createdAt": "2024-03-05T12:00:00.000Z", "core": {"text": "@carol" + words}},
    ]
    (data / "note-tweet.js").write_text(
        "window.YTD.note_tweet.part0 = " + json.dumps([{"noteTweet": n} for n in notes])
    )
    assert [c.messages[1].text for c in _convs(tmp_path)] == [
        "@carol" + words,
        words.strip(),
    ]


def test_community_posts_are_read_like_tweets(tmp_path: Path) -> None:
    # X Communities posts are in community-tweet.js, not tweets.js: an archive may hold
    # nothing else.
    data = _archive(
        tmp_path,
        community_tweet=[_post("1", "My favourite rye recipe uses caraway seeds")],
        community_tweet_part1=[_post("2", "Rye needs a longer proof than wheat")],
    )
    expected = [
        ("twitter/1", ["Write a post about favourite rye recipe.",
                       "My favourite rye recipe uses caraway seeds"]),
        ("twitter/2", ["Write a post about rye needs, longer proof.",
                       "Rye needs a longer proof than wheat"]),
    ]  # fmt: skip
    for path in (tmp_path, data / "community-tweet.js"):
        assert [(c.id, [m.text for m in c.messages]) for c in _convs(path)] == expected
    assert [m.sender for m in _convs(tmp_path)[0].messages] == [PROMPT_SENDER, ZOE]


def test_a_quote_without_comment_is_a_retweet_and_a_bare_link_is_dropped(
    tmp_path: Path,
) -> None:
    def linked(tid: str, text: str, *urls: tuple[str, str]) -> dict:
        links = [{"url": short, "expanded_url": full} for short, full in urls]
        return _post(tid, text, entities={"urls": links, "user_mentions": []})

    _archive(
        tmp_path,
        tweets=[
            # someone else's post quoted, nothing added: their words, not yours
            linked("1", "https://t.co/Q1", ("https://t.co/Q1", "https://x.com/alice/status/5")),
            # a link shared, nothing written
            linked("2", "https://t.co/L1", ("https://t.co/L1", "https://news.example/story")),
            linked(
                "3",
                "https://t.co/L2 https://t.co/L3",
                ("https://t.co/L2", "https://news.example/a"),
                ("https://t.co/L3", "https://news.example/b"),
            ),
            # words with the link: kept
            linked("4", "worth a read https://t.co/L4",
                   ("https://t.co/L4", "https://news.example/c")),
            linked("5", "so true https://t.co/Q2",
                   ("https://t.co/Q2", "https://twitter.com/bob/status/6")),
        ],
    )  # fmt: skip
    convs = _convs(tmp_path)
    assert [[m.text for m in c.messages] for c in convs] == [
        ["Write a post about worth, read.", "worth a read https://news.example/c"],
        ["Write a post about true.", "so true"],
    ]
    assert convs[0].dropped == {"retweet": 1, "link": 2}


# -- long posts: cut in tweets.js, whole in note-tweet.js --------------------------------------

LONG = (
    "Long post about proofing times, because people keep asking. Cold retard overnight in "
    "the fridge gives the crumb a tang & a glossy crust; a warm kitchen halves the time but "
    "you lose flavour. My rule: if the dough jiggles like a waterbed and springs back slowly "
    "when poked, it is ready, whatever the clock says. Details here: https://t.co/link1 and "
    "that is all."
)


def _long_post_archive(root: Path, notes: list[dict]) -> Path:
    """An archive with cut long posts in tweets.js and `notes` as data/note-tweet.js."""
    data = root / "data"
    data.mkdir(parents=True)
    shutil.copy(ARCHIVE / "data" / "account.js", data / "account.js")
    cut = LONG.replace("&", "&amp;")[:270] + "… https://t.co/more1"
    tweets = [
        {  # a long post: tweets.js holds 270 characters and a link to the rest
            "id_str": "300",
            "created_at": "Thu Jun 01 17:08:25 +0000 2023",
            "full_text": cut,
            "entities": {
                "urls": [
                    {
                        "url": "https://t.co/more1",
                        "expanded_url": "https://twitter.com/i/web/status/300",
                    }
                ]
            },
        },
        {  # a long reply to someone else, its note written a second later
            "id_str": "301",
            "created_at": "Fri Jun 02 09:00:00 +0000 2023",
            "full_text": "@bakerbob " + "rye is different: " * 14 + "… https://t.co/more2",
            "in_reply_to_status_id_str": "9",
            "in_reply_to_screen_name": "bakerbob",
        },
        {  # posted in the same second as a note it has nothing to do with
            "id_str": "302",
            "created_at": "Thu Jun 01 17:08:25 +0000 2023",
            "full_text": "short and whole",
        },
        {  # cut, but the archive has no note for it: kept as it is
            "id_str": "303",
            "created_at": "Sat Jun 03 10:00:00 +0000 2023",
            "full_text": "a long one with no note " * 11 + "… https://t.co/more3",
        },
    ]
    (data / "tweets.js").write_text(
        "window.YTD.tweets.part0 = " + json.dumps([{"tweet": t} for t in tweets])
    )
    (data / "note-tweet.js").write_text(
        "window.YTD.note_tweet.part0 = " + json.dumps([{"noteTweet": n} for n in notes])
    )
    return data


LONG_NOTE = {
    "noteTweetId": "900",
    "createdAt": "2023-06-01T17:08:25.000Z",
    "core": {
        "text": LONG,
        "urls": [{"shortUrl": "https://t.co/link1", "expandedUrl": "https://example.com/proof"}],
        "mentions": [],
        "hashtags": [],
    },
}
REPLY_NOTE = {
    "noteTweetId": "901",
    "createdAt": "2023-06-02T09:00:01.000Z",
    "core": {"text": "@bakerbob " + "rye is different: " * 20 + "the end."},
}


def _post_texts(path: Path) -> dict[str, str]:
    return {c.id: c.messages[1].text for c in _convs(path)}


def test_long_posts_take_their_whole_text_from_note_tweet_js(tmp_path: Path) -> None:
    _long_post_archive(tmp_path, [LONG_NOTE, REPLY_NOTE])
    assert _post_texts(tmp_path) == {
        # whole, its link expanded, the entity decoded once
        "twitter/300": LONG.replace("https://t.co/link1", "https://example.com/proof"),
        "twitter/302": "short and whole",
        # the reply @-prefix stripped as for any reply
        "twitter/301": ("rye is different: " * 20 + "the end.").strip(),
        # no note: the cut text, its link to the rest gone
        "twitter/303": "a long one with no note " * 11 + "…",
    }


def test_tweets_js_given_alone_reads_the_note_beside_it(tmp_path: Path) -> None:
    data = _long_post_archive(tmp_path, [LONG_NOTE])
    texts = _post_texts(data / "tweets.js")
    assert texts["twitter/300"].endswith(
        "when poked, it is ready, whatever the clock says. "
        "Details here: https://example.com/proof and that is all."
    )


def test_a_note_that_does_not_continue_the_post_is_not_used(tmp_path: Path) -> None:
    other = dict(LONG_NOTE, core={"text": "Something else entirely, " * 20})
    _long_post_archive(tmp_path, [other])
    assert _post_texts(tmp_path)["twitter/300"].endswith("…")


@pytest.mark.parametrize(
    ("item", "said"), [(7, "it is a number"), ({"tweet": "gm"}, '"tweet" is a string')]
)
def test_a_post_that_is_not_an_object_is_a_located_error(
    tmp_path: Path, item: object, said: str
) -> None:
    # It was skipped without a word, as if the archive did not hold it.
    shutil.copytree(ARCHIVE, tmp_path / "archive")
    tweets = tmp_path / "archive" / "data" / "tweets.js"
    prefix, _, body = tweets.read_text(encoding="utf-8").partition("=")
    posts = json.loads(body)
    posts[1] = item
    tweets.write_text(f"{prefix}= {json.dumps(posts)}", encoding="utf-8")
    with pytest.raises(ImportErrorMessage) as err:
        _convs(tmp_path / "archive")
    assert str(err.value) == f"{tweets}: post 2 is malformed ({said}, not an object)"


def test_a_malformed_note_is_a_located_error(tmp_path: Path) -> None:
    _long_post_archive(tmp_path, [LONG_NOTE, {"noteTweetId": "902", "core": {"text": "x"}}])
    with pytest.raises(ImportErrorMessage) as err:
        _convs(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'data' / 'note-tweet.js'}: long post 2 is malformed (it needs core.text "
        "and createdAt)"
    )


# -- direct messages: data/direct-messages.js (+ -group.js) ------------------------------------


def _dm(mid: int, sender: str, text: str, at: str, **extra: object) -> dict:
    create = {"id": str(mid), "senderId": sender, "text": text, "createdAt": at, **extra}
    return {"messageCreate": create}


def _dm_archive(root: Path, *, tweets: bool = True, account: bool = True) -> Path:
    """An archive whose DMs are one chat with @bakerbob (55) and one group chat."""
    data = root / "data"
    if tweets:
        shutil.copytree(ARCHIVE / "data", data)
    else:
        data.mkdir(parents=True)
        shutil.copy(ARCHIVE / "data" / "account.js", data / "account.js")
    if not account:
        (data / "account.js").unlink()
    chat = {
        "conversationId": "55-4242",
        "messages": [  # newest first, as the archive lists them
            _dm(
                1005,
                "4242",
                "https://t.co/pic1",
                "2023-05-02T18:06:00.000Z",
                mediaUrls=["https://ton.twitter.com/pic1.jpg"],
            ),
            _dm(
                1004,
                "4242",
                "recipe is here https://t.co/abc",
                "2023-05-02T18:05:00.000Z",
                urls=[{"url": "https://t.co/abc", "expanded": "https://example.com/rye"}],
            ),
            _dm(1003, "4242", "rye &amp; caraway, obviously", "2023-05-02T18:05:00.000Z"),
            _dm(1002, "55", "which bread for sunday?", "2023-05-02T18:00:00.000Z"),
            _dm(1001, "55", "hey zoe", "2023-05-02T17:59:00.000Z"),
        ],
    }
    group = {
        "conversationId": "g-1",
        "messages": [
            _dm(2003, "4242", "count me in", "2023-05-03T09:02:00.000Z"),
            _dm(2002, "999", "picnic saturday?", "2023-05-03T09:01:00.000Z"),
            {"joinConversation": {"initiatingUserId": "999", "createdAt": "2023-05-03T09:00Z"}},
        ],
    }
    (data / "direct-messages.js").write_text(
        "window.YTD.direct_messages.part0 = " + json.dumps([{"dmConversation": chat}])
    )
    (data / "direct-messages-group.js").write_text(
        "window.YTD.direct_messages_group.part0 = " + json.dumps([{"dmConversation": group}])
    )
    return data


def test_direct_messages_are_conversations_with_the_people_in_them(tmp_path: Path) -> None:
    _dm_archive(tmp_path)
    convs = _convs(tmp_path)
    # the posts first, as before; then each DM conversation, file by file
    assert [c.id for c in convs] == [*POSTS, "twitter/dm/55-4242", "twitter/dm/g-1"]
    chat, group = convs[-2:]
    # 55 is @bakerbob: a post of Zoë's answered him, so the archive knows his handle
    assert [(m.sender, m.text) for m in chat.messages] == [
        ("@bakerbob", "hey zoe"),
        ("@bakerbob", "which bread for sunday?"),
        (ZOE, "rye & caraway, obviously"),  # same minute: the lower id first
        (ZOE, "recipe is here https://example.com/rye"),
    ]
    assert chat.participants == [ZOE, "@bakerbob"]
    assert chat.title == "DM with @bakerbob"
    assert not chat.is_group
    assert chat.dropped == {"media": 1}
    # nobody's handle for 999: the account id stands in
    assert [(m.sender, m.text) for m in group.messages] == [
        ("999", "picnic saturday?"),
        (ZOE, "count me in"),
    ]
    assert group.is_group
    assert group.dropped == {"system": 1}


def test_an_older_archive_names_its_dm_files_in_the_singular(tmp_path: Path) -> None:
    # Older archives write direct-message.js, direct-message-group.js (window.YTD.
    # direct_message.part0 = …) and direct-message-partN.js, with the same content; beside
    # them direct-message-headers.js holds ids and times only. Their DMs were left out: an
    # archive of only DMs stopped with "No tweets or direct messages".
    new = [(c.id, c.messages, c.is_group) for c in _convs(_dm_archive(tmp_path / "new").parent)]
    data = _dm_archive(tmp_path / "old", tweets=False)
    for kind in ("", "_group"):
        plural = data / f"direct-messages{kind.replace('_', '-')}.js"
        text = plural.read_text().replace("direct_messages", "direct_message")
        plural.unlink()
        (data / f"direct-message{kind.replace('_', '-')}.js").write_text(text)
    (data / "direct-message-headers.js").write_text(
        "window.YTD.direct_message_headers.part0 = "
        + json.dumps(
            [
                {
                    "dmConversation": {
                        "conversationId": "55-4242",
                        "messages": [_dm(1002, "55", "", "2023-05-02T18:00:00.000Z")],
                    }
                }
            ]
        )
    )
    old = [(c.id, c.messages, c.is_group) for c in _convs(tmp_path / "old")]
    assert [cid for cid, _, _ in old] == ["twitter/dm/55-4242", "twitter/dm/g-1"]
    assert [(cid, group) for cid, _, group in old] == [(cid, g) for cid, _, g in new[-2:]]
    # no posts here: 55 has no handle, so compare texts and times
    assert [[(m.text, m.timestamp) for m in msgs] for _, msgs, _ in old] == [
        [(m.text, m.timestamp) for m in msgs] for _, msgs, _ in new[-2:]
    ]
    # the file given alone stands for the archive, as direct-messages.js does
    assert [c.id for c in _convs(data / "direct-message.js")] == [cid for cid, _, _ in old]


def test_a_photo_sent_in_a_dm_is_media_and_its_caption_is_kept(tmp_path: Path) -> None:
    # The archive writes a DM's photo, video or GIF as a t.co link in the text whose `urls`
    # entry expands to the DM media page (twitter.com/messages/media/<id>, x.com in newer
    # archives), with the file itself in mediaUrls: a caption is the sender's words, the
    # link is not.
    data = _dm_archive(tmp_path, tweets=False)
    media = [
        _dm(
            3002,
            "4242",
            "mine came out flat https://t.co/Pc1",
            "2023-05-04T10:01:00.000Z",
            mediaUrls=["https://ton.twitter.com/dm/3002/1/a.jpg"],
            urls=[
                {
                    "url": "https://t.co/Pc1",
                    "expanded": "https://twitter.com/messages/media/3002",
                    "display": "pic.twitter.com/Pc1",
                }
            ],
        ),
        _dm(
            3001,
            "55",
            " https://t.co/Pc2",
            "2023-05-04T10:00:00.000Z",
            mediaUrls=["https://video.twimg.com/dm_video/3001/vid/a.mp4"],
            urls=[
                {
                    "url": "https://t.co/Pc2",
                    "expanded": "https://x.com/messages/media/3001",
                    "display": "pic.x.com/Pc2",
                }
            ],
        ),
    ]
    chats = json.loads((data / "direct-messages.js").read_text().split("= ", 1)[1])
    chats[0]["dmConversation"]["messages"][:0] = media
    (data / "direct-messages.js").write_text(
        "window.YTD.direct_messages.part0 = " + json.dumps(chats)
    )
    chat = _convs(tmp_path)[0]
    assert [(m.sender, m.text) for m in chat.messages][-1] == (ZOE, "mine came out flat")
    assert chat.dropped == {"media": 2}  # pic1 (no urls entry) and 55's video


def test_direct_messages_make_ordinary_chat_examples(tmp_path: Path) -> None:
    _dm_archive(tmp_path)
    examples = [
        e.messages[1:]
        for e in build_examples(_convs(tmp_path), "@zoemartin")
        if e.conversation_id.startswith("twitter/dm/")
    ]
    assert examples == [
        [
            {"role": "user", "content": "hey zoe\nwhich bread for sunday?"},
            {
                "role": "assistant",
                "content": "rye & caraway, obviously\nrecipe is here https://example.com/rye",
            },
        ],
        [
            {"role": "user", "content": "999: picnic saturday?"},
            {"role": "assistant", "content": "count me in"},
        ],
    ]


def test_an_archive_of_only_direct_messages_given_by_its_file(tmp_path: Path) -> None:
    data = _dm_archive(tmp_path, tweets=False)
    by_folder = [(c.id, c.messages) for c in _convs(tmp_path)]
    assert [cid for cid, _ in by_folder] == ["twitter/dm/55-4242", "twitter/dm/g-1"]
    # no posts: nothing to name 55 after
    assert by_folder[0][1][0].sender == "55"
    assert [(c.id, c.messages) for c in _convs(data / "direct-messages.js")] == by_folder


def test_without_account_js_your_dms_are_under_your_account_id(tmp_path: Path) -> None:
    _dm_archive(tmp_path, tweets=False, account=False)
    convs = _convs(tmp_path)
    assert {m.sender for c in convs for m in c.messages} == {"4242", "55", "999"}
    examples = list(build_examples(convs, "4242"))
    assert [e.messages[-1]["content"] for e in examples] == [
        "rye & caraway, obviously\nrecipe is here https://example.com/rye",
        "count me in",
    ]


def _without_account(root: Path, *, tweets: bool) -> Path:
    """The DM archive without account.js, with a second one-to-one chat (77-4242)."""
    data = _dm_archive(root, tweets=tweets, account=False)
    chats = json.loads((data / "direct-messages.js").read_text().split("= ", 1)[1])
    chats.append(
        {
            "dmConversation": {
                "conversationId": "4242-77",
                "messages": [
                    _dm(3002, "4242", "thanks, will do", "2023-05-04T10:01:00.000Z"),
                    _dm(3001, "77", "try more water", "2023-05-04T10:00:00.000Z"),
                ],
            }
        }
    )
    (data / "direct-messages.js").write_text(
        "window.YTD.direct_messages.part0 = " + json.dumps(chats)
    )
    return data


def _replies(out: Path) -> list[tuple[str, str]]:
    """(system prompt, last assistant turn) of each example written to `out`."""
    lines = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    return [(m[0]["content"], m[-1]["content"]) for m in lines]


OWNER_REPLIES = [  # file by file: the one-to-one chats, then the group
    "rye & caraway, obviously\nrecipe is here https://example.com/rye",
    "thanks, will do",
    "count me in",
]


def test_without_account_js_the_owner_is_found_and_named_by_me(tmp_path: Path) -> None:
    # The one id in every one-to-one conversation (55-4242, 4242-77) is the owner's: a name
    # the export has for nobody else names them, and their DMs are the answers.
    _without_account(tmp_path, tweets=False)
    out = tmp_path / "zoe.jsonl"
    result = run_import("twitter", tmp_path, "Zoë", out)
    assert result.stats.me_name == "Zoë"
    assert _replies(out) == [(result.system, reply) for reply in OWNER_REPLIES]
    assert result.system.startswith("You are Zoë.")
    # the id still names them, as before
    run_import("twitter", tmp_path, "4242", tmp_path / "id.jsonl")
    assert [r for _s, r in _replies(tmp_path / "id.jsonl")] == OWNER_REPLIES


def test_without_account_js_me_naming_someone_else_is_them(tmp_path: Path) -> None:
    # --me 55 is @bakerbob's id: the owner does not take it, their DMs stay theirs.
    _without_account(tmp_path, tweets=False)
    convs = list(one_name_per_sender(_convs(tmp_path), me="55"))
    assert [[m.sender for m in c.messages] for c in convs] == [
        ["55", "55", "me", "me"],
        ["77", "me"],
        ["999", "me"],
    ]
    assert {m.sender_id for c in convs for m in c.messages if m.sender == "me"} == {"4242"}


def test_without_account_js_a_self_reply_gives_the_handle(tmp_path: Path) -> None:
    # The self-thread's replies answer 4242, @zoemartin: --me @zoemartin is the owner, in
    # posts and DMs alike, under that handle's name.
    _without_account(tmp_path, tweets=True)
    out = tmp_path / "zoe.jsonl"
    result = run_import("twitter", tmp_path, "@zoemartin", out)
    assert result.stats.me_messages == 7 + 4  # 7 posts, 4 DMs
    assert [r for _s, r in _replies(out)][-3:] == OWNER_REPLIES
    assert [c.id for c in _convs(tmp_path)][:5] == POSTS


def test_without_account_js_one_dm_conversation_is_ambiguous(tmp_path: Path) -> None:
    # 55-4242 alone: either could be the owner; a name that is nobody's is not a guess.
    _dm_archive(tmp_path, tweets=False, account=False)
    with pytest.raises(ImportErrorMessage) as err:
        run_import("twitter", tmp_path, "Zoë", tmp_path / "zoe.jsonl")
    assert str(err.value) == (
        "--me 'Zoë' matches no sender, and this X archive has no data/account.js to say "
        "which of 4242 and 55 is you (its only DM conversation is between them): include "
        "data/account.js from the archive, or pass your account id as --me"
    )
    assert not (tmp_path / "zoe.jsonl").exists()
    # the id still says it
    assert run_import("twitter", tmp_path, "4242", tmp_path / "zoe.jsonl").examples == 2


def test_a_malformed_conversation_is_a_located_error(tmp_path: Path) -> None:
    data = _dm_archive(tmp_path)
    (data / "direct-messages-group.js").write_text(
        'window.YTD.direct_messages_group.part0 = [{"dmConversation": {"conversationId": "g"}}]'
    )
    with pytest.raises(ImportErrorMessage) as err:
        _convs(tmp_path)
    assert str(err.value) == (
        f"{data / 'direct-messages-group.js'}: conversation 1 is malformed ('messages')"
    )


def test_odd_mentions_in_posts_name_nobody_and_break_nothing(tmp_path: Path) -> None:
    data = _dm_archive(tmp_path)
    (data / "tweets-part2.js").write_text(
        "window.YTD.tweets.part2 = "
        + json.dumps(
            [
                {
                    "tweet": {
                        "id_str": str(400 + i),
                        "created_at": "Mon May 01 09:00:00 +0000 2023",
                        "full_text": f"odd post {i}",
                        "entities": {"user_mentions": mentions},
                    }
                }
                for i, mentions in enumerate(
                    [5, "x", [7, {"id_str": {}, "screen_name": "a"}], [{"id_str": "999"}]]
                )
            ]
        )
    )
    group = _convs(tmp_path)[-1]
    assert [m.sender for m in group.messages] == ["999", ZOE]


@pytest.mark.parametrize(
    "expanded",
    [
        "https://twitter.com/bakerbob/status/1650000000000000001",
        "https://x.com/bakerbob/status/1650000000000000001?s=20",
    ],
)
def test_a_dm_that_only_shares_a_post_is_dropped_as_a_link(tmp_path: Path, expanded: str) -> None:
    # The archive writes a shared post as a t.co link whose `urls` entry expands to its status.
    data = _dm_archive(tmp_path, tweets=False)
    shared = _dm(3003, "55", "https://t.co/St1", "2023-05-04T10:02:00.000Z",
                 urls=[{"url": "https://t.co/St1", "expanded": expanded, "display": "x.com/…"}])  # fmt: skip
    empty = _dm(3004, "55", " ", "2023-05-04T10:03:00.000Z")  # nothing at all: still empty
    chats = json.loads((data / "direct-messages.js").read_text().split("= ", 1)[1])
    chats[0]["dmConversation"]["messages"][:0] = [empty, shared]
    (data / "direct-messages.js").write_text(
        "window.YTD.direct_messages.part0 = " + json.dumps(chats)
    )
    chat = _convs(tmp_path)[0]
    assert chat.dropped == {"link": 1, "empty": 1, "media": 1}  # media: the archive's pic1
    assert all("t.co" not in m.text and "status" not in m.text for m in chat.messages)


def test_a_dm_of_only_a_link_to_another_site_is_dropped_as_a_link(tmp_path: Path) -> None:
    # As a post of only links is, and a Messenger message: shared, not written.
    data = _dm_archive(tmp_path, tweets=False)
    site = [{"url": "https://t.co/Ex1", "expanded": "https://example.com/recipes/sourdough"}]
    bare = _dm(3003, "55", "https://t.co/Ex1", "2023-05-04T10:02:00.000Z", urls=site)
    two = _dm(3004, "55", "www.example.com https://example.org/a", "2023-05-04T10:02:30.000Z")
    said = _dm(3005, "55", "try this https://t.co/Ex1", "2023-05-04T10:03:00.000Z", urls=site)
    chats = json.loads((data / "direct-messages.js").read_text().split("= ", 1)[1])
    chats[0]["dmConversation"]["messages"][:0] = [said, two, bare]
    (data / "direct-messages.js").write_text(
        "window.YTD.direct_messages.part0 = " + json.dumps(chats)
    )
    chat = _convs(tmp_path)[0]
    assert chat.dropped == {"link": 2, "media": 1}  # media: the archive's pic1
    texts = [m.text for m in chat.messages]
    assert "try this https://example.com/recipes/sourdough" in texts  # words with it: kept
    assert not any(t.startswith(("https://", "www.")) for t in texts)


def _edited(tid: str, text: str, chain: list[str], **extra: object) -> dict:
    """A version of an edited post, with edit_info as X writes it on that version."""
    if tid == chain[0]:
        info: dict = {"initial": {"editTweetIds": chain, "editsRemaining": "4"}}
    else:
        info = {"edit": {"initialTweetId": chain[0],
                         "editControlInitial": {"editTweetIds": chain}}}  # fmt: skip
    return _post(tid, text, edit_info=info, **extra)


def test_an_edited_post_is_kept_once_as_its_last_version(tmp_path: Path) -> None:
    # X writes every version of an edited post into tweets.js as a post of its own: the
    # typo and its fix. Only the fix is what she meant; the first version is dropped.
    chain = ["10", "12"]
    _archive(
        tmp_path,
        tweets=[
            _edited("10", "Rye bread needs a lnger proof", chain),
            _post("11", "Sourdough discard crackers, never edited"),
            _edited("12", "Rye bread needs a longer proof", chain),
        ],
    )
    convs = _convs(tmp_path)
    # in the order first posted: the edited post went up before the other one
    assert [(c.id, [m.text for m in c.messages]) for c in convs] == [
        ("twitter/12", ["Write a post about rye bread needs, longer proof.",
                        "Rye bread needs a longer proof"]),
        ("twitter/11", ["Write a post about sourdough discard crackers, edited.",
                        "Sourdough discard crackers, never edited"]),
    ]  # fmt: skip
    assert [c.dropped for c in convs] == [{"edited": 1}, {}]


def test_a_self_thread_whose_first_post_was_edited_stays_one_thread(tmp_path: Path) -> None:
    # The reply answers the first version's id, and was posted before the edit: it still
    # follows the last version, which keeps the time the post first went up.
    chain = ["10", "13", "14"]
    _archive(
        tmp_path,
        tweets=[
            _edited("10", "Bagel thread, take one", chain),
            _post("12", "1/ boil them first", in_reply_to_status_id_str="10",
                  in_reply_to_screen_name="zoemartin"),
            _edited("13", "Bagel thread, take two", chain),
            _edited("14", "Bagel thread: what I learned", chain),
        ],
    )  # fmt: skip
    (thread,) = _convs(tmp_path)
    assert thread.id == "twitter/14"
    assert [m.text for m in thread.messages] == [
        "Write a thread about bagel thread, learned.",
        "Bagel thread: what I learned",
        "1/ boil them first",
    ]
    assert thread.messages[1].timestamp == dt.datetime(2024, 3, 4, 12, 10)
    assert thread.dropped == {"edited": 2}
