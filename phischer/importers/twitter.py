"""X / Twitter archive: `data/tweets.js` (+ `tweets-partN.js`; older archives: `tweet.js`).

Posts made in X Communities are in `data/community-tweet.js` instead, written like tweets.js:
they are read as posts like any other.

Direct messages (`direct-messages.js`, `direct-messages-group.js`; older archives:
`direct-message.js`, `direct-message-group.js`) are real conversations and
become ordinary chats; people appear by account id, or by @handle when a post of yours
mentioned or answered them (`_handles`).

Posts longer than 280 characters ("long posts", since 2023) are cut short in tweets.js, their
whole text kept in `data/note-tweet.js`: a cut post takes the note posted in the same second
whose text it begins (see `_with_note`).

An archive holds only your own posts, so most have no conversation partner. To still train
"write posts in my voice", each post (or self-thread) becomes a conversation that starts
with a *topic prompt*: a user turn from the pseudo-sender `PROMPT_SENDER`, derived offline
from the post itself (see `topic_prompt`), followed by the post(s) as your turn. The builder
then makes ordinary (prompt -> post) examples from it, with no special case.

Self-threads (your replies to your own posts) are one conversation, posts in order, so the
builder merges them into one reply, however far apart they were posted (`one_session`).
Replies to other people keep their target in the prompt ("Write a reply to @bob about …"):
the post they answered is not in the archive.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import html
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from phischer.chat_format import json_kind
from phischer.importers.base import (
    LINK,
    MALFORMED,
    UNNAMED_OWNER,
    Conversation,
    ImportErrorMessage,
    Message,
    only_links,
    register,
)
from phischer.importers.files import Export, open_export, parse_json
from phischer.importers.topic_prompt import topic_prompt

PROMPT_SENDER = "prompt"
# Used as the sender when the archive has no data/account.js to name its owner.
FALLBACK_OWNER = "me"

_TWEET_FILES = (
    "tweets.js",
    "tweets-part*.js",
    "tweet.js",
    "tweet-part*.js",
    "community-tweet.js",
    "community-tweet-part*.js",
)
_NOTE_FILES = ("note-tweet.js", "note-tweet-part*.js")
_DM_FILES = (
    "direct-messages.js",
    "direct-messages-part*.js",
    "direct-messages-group.js",
    "direct-messages-group-part*.js",
    # Older archives name them in the singular, with the same content; their
    # direct-message-headers.js (ids and times, no text) is not matched.
    "direct-message.js",
    "direct-message-part*.js",
    "direct-message-group.js",
    "direct-message-group-part*.js",
)
# The group chats' files, in either naming.
_GROUP_DM_FILES = ("direct-messages-group*.js", "direct-message-group*.js")
_YTD_PREFIX = re.compile(r"^\s*window\.YTD\.[\w.]+\s*=\s*")
_REPLY_PREFIX = re.compile(r"^(?:\.?@\w{1,50}[\s,:]+)+")
_TRAILING_TCO = re.compile(r"(?:\s*https?://t\.co/\w+)+\s*$")
# Quote posts link the quoted status, and a cut long post links the rest of itself
# (twitter.com/i/web/status/…): without the text they point to, the links are noise.
_STATUS_URL = re.compile(
    r"https?://(?:www\.|mobile\.)?(?:twitter|x)\.com/(?:\w+|i/web)/status(?:es)?/\d+\S*"
)
# A photo, video or GIF sent in a DM is a t.co link in the message's text whose `urls` entry
# expands to the DM media page, twitter.com/messages/media/<id> (x.com in newer archives):
# the attachment itself, not a link anyone typed.
_DM_MEDIA_URL = re.compile(r"https?://(?:www\.|mobile\.)?(?:twitter|x)\.com/messages/media/\d+")


def _load_ytd(export: Export, name: str) -> list[Any]:
    # The archive's data files are JavaScript for its offline viewer:
    # `window.YTD.tweets.part0 = [ … ]`. Everything after the "=" is JSON.
    text = export.read_text(name)
    # The prefix's line breaks stay, so an error's line number is the file's.
    body = _YTD_PREFIX.sub(lambda m: "\n" * m[0].count("\n"), text, count=1)
    data = parse_json(body, export.where(name))
    if not isinstance(data, list):
        raise ImportErrorMessage(f"{export.where(name)} is not a Twitter data file (no list)")
    return data


def _data_files(export: Export, patterns: tuple[str, ...]) -> list[tuple[Export, str]]:
    """(export, member) for each of the archive's data files matching `patterns`."""
    if export.kind != "file":
        return [(export, n) for pattern in patterns for n in export.members(pattern)]
    # A data file given alone stands for its archive: the archive splits big histories over
    # tweets.js, tweets-part1.js, … and keeps DMs and long posts in files of their own, so
    # the files beside it are read as a folder import would (same patterns, not recursive),
    # each opened as a file of its own (a single file holds nothing open: no closing).
    path = export.path
    if not any(fnmatch.fnmatchcase(path.name, p) for p in _TWEET_FILES + _DM_FILES):
        return []
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        names = [path.name]
    return [
        (open_export(path.parent / n), n)
        for pattern in patterns
        for n in names
        if fnmatch.fnmatchcase(n, pattern) and (path.parent / n).is_file()
    ]


def _is_group_file(name: str) -> bool:
    """Whether a DM data file holds group chats (direct-messages-group.js, …)."""
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base, p) for p in _GROUP_DM_FILES)


def _owner(export: Export) -> Message | None:
    """The archive's owner as data/account.js names them; None without it."""
    found = _data_files(export, ("account.js",))
    return _owner_from(*found[0]) if found else None


def _inferred_owner(export: Export, posts: Any) -> tuple[Message, frozenset[str]]:
    """The owner of an archive without account.js, and the ids that may be theirs if unsure."""
    # A partial copy of the archive: the owner's id is inferred, their name is left to --me
    # (UNNAMED_OWNER, see senders), their handle is known if a self-reply names it.
    ids, handles = _self_replies(posts)
    candidates = _dm_pairs(export)
    if candidates is None or (len(candidates) > 1 and ids & candidates):
        candidates = ids if candidates is None else ids & candidates
    if len(candidates) != 1:
        return Message(FALLBACK_OWNER, "", dt.datetime.min), frozenset(candidates)
    (uid,) = candidates
    handle = handles.get(uid)
    aliases = (handle, f"@{handle}", UNNAMED_OWNER) if handle else (UNNAMED_OWNER,)
    return Message(FALLBACK_OWNER, "", dt.datetime.min, uid, aliases), frozenset()


def _self_replies(posts: Any) -> tuple[set[str], dict[str, str]]:
    """The user ids (and their handles) that your posts answered in your own self-threads."""
    kept = {str(t.get("id_str") or t.get("id")) for _when, _text, t in posts}
    ids: set[str] = set()
    handles: dict[str, str] = {}
    for _when, _text, tweet in posts:
        uid = tweet.get("in_reply_to_user_id_str")
        if tweet.get("in_reply_to_status_id_str") in kept and isinstance(uid, str) and uid:
            ids.add(uid)  # a reply to a post of the archive is a reply to its owner
            name = tweet.get("in_reply_to_screen_name")
            if isinstance(name, str) and name:
                handles[uid] = name
    return ids, handles


def _dm_pairs(export: Export) -> set[str] | None:
    """The ids in every one-to-one DM conversation ("<id>-<id>"); None if there is none."""
    common: set[str] | None = None
    for source, name in _data_files(export, _DM_FILES):
        if _is_group_file(name):
            continue
        for item in _load_ytd(source, name):
            dm = item.get("dmConversation") if isinstance(item, dict) else None
            cid = dm.get("conversationId") if isinstance(dm, dict) else None
            pair = set(cid.split("-")) if isinstance(cid, str) else set()
            if len(pair) == 2 and all(p.isdigit() for p in pair):  # malformed: said later
                common = pair if common is None else common & pair
    return common


def _owner_from(export: Export, name: str) -> Message:
    data = _load_ytd(export, name)
    account = data[0].get("account", data[0]) if data and isinstance(data[0], dict) else {}
    if not isinstance(account, dict) or not all(
        isinstance(account.get(k), str | None)
        for k in ("username", "accountDisplayName", "accountId")
    ):
        raise ImportErrorMessage(
            f"{export.where(name)}: the account is malformed (username, accountDisplayName "
            "and accountId must be strings)"
        )
    username = account.get("username") or ""
    display = account.get("accountDisplayName") or username or FALLBACK_OWNER
    aliases = tuple(a for a in (username, f"@{username}" if username else "") if a)
    return Message(
        sender=display,
        text="",
        timestamp=dt.datetime.min,
        sender_id=account.get("accountId"),
        aliases=aliases,
    )


Notes = dict[dt.datetime, list[dict[str, Any]]]


def _notes(export: Export) -> Notes:
    """The archive's long posts (`noteTweet` items), by the second they were posted."""
    notes: Notes = {}
    for source, name in _data_files(export, _NOTE_FILES):
        for i, item in enumerate(_load_ytd(source, name), 1):
            note = item.get("noteTweet", item) if isinstance(item, dict) else None
            core = note.get("core") if isinstance(note, dict) else None
            text = core.get("text") if isinstance(core, dict) else None
            when = _parse_time(note.get("createdAt")) if isinstance(note, dict) else None
            if not isinstance(text, str) or when is None:
                raise ImportErrorMessage(
                    f"{source.where(name)}: long post {i} is malformed (it needs "
                    "core.text and createdAt)"
                )
            notes.setdefault(when.replace(microsecond=0), []).append(core)
    return notes


def _comparable(text: str) -> str:
    # What a cut post and its note share: no links (the cut post ends in one to the note),
    # no reply @-prefix, no ellipsis, entities decoded, one space between words.
    text = html.unescape(LINK.sub(" ", text)).strip().removesuffix("…").removesuffix("...")
    return " ".join(_REPLY_PREFIX.sub("", text).split())


# A cut post and its note must agree on this many characters (fewer if the post is shorter).
NOTE_PREFIX_CHARS = 60


def _with_note(tweet: dict[str, Any], when: dt.datetime, notes: Notes) -> dict[str, Any]:
    """`tweet` with the whole text of its long post, when tweets.js holds it cut short."""
    cut = _comparable(tweet.get("full_text") or tweet.get("text") or "")
    if not cut:
        return tweet
    second = when.replace(microsecond=0)
    # Same second, or the next or previous one: the two records are written a moment apart.
    nearby = [second + dt.timedelta(seconds=d) for d in (0, -1, 1)]
    for core in (core for t in nearby for core in notes.get(t, [])):
        full = core["text"]
        whole = _comparable(full)
        if len(whole) > len(cut) and whole.startswith(cut[:NOTE_PREFIX_CHARS]):
            links = core.get("urls")
            urls = [
                {"url": u.get("shortUrl"), "expanded_url": u.get("expandedUrl")}
                for u in (links if isinstance(links, list) else [])
                if isinstance(u, dict)
            ]
            # The note's own links; the post's media (its t.co links are in the note too).
            entities = dict(tweet.get("entities") or {}, urls=urls)
            noted = dict(tweet, full_text=full, text=full, entities=entities)
            start = _display_start(tweet)
            original = tweet.get("full_text") or tweet.get("text") or ""
            if start and not full.startswith(original[:start]):
                # The post's hidden reply @names do not begin the note: its range would cut
                # the note's own words, so the reply prefix is found by its pattern instead.
                del noted["display_text_range"]
            return noted
    return tweet


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.strptime(value, "%a %b %d %H:%M:%S %z %Y")
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:  # year 1 or 9999 moved past the calendar's end
            return None
    return parsed


def _display_start(tweet: dict[str, Any]) -> int | None:
    """Where the text shown on X begins (`display_text_range[0]`), if the post says."""
    span = tweet.get("display_text_range")
    if not isinstance(span, list) or not span:
        return None
    return max(int(span[0]), 0)  # written as a string ("5"); ValueError if it is not a number


def clean_text(tweet: dict[str, Any]) -> str:
    """A post's text as written: links expanded, media/quote links and reply @-prefixes gone."""
    text = tweet.get("full_text") or tweet.get("text") or ""
    start = _display_start(tweet)
    if start is not None:
        # X adds the @names of the people a reply goes to before the text and hides them:
        # the shown text begins at display_text_range[0] (in code points, as Python counts).
        # A mention typed first ("@bob @carol you should both come" to bob) is kept.
        text = text[start:]
    entities = tweet.get("entities") or {}
    media = list(entities.get("media") or []) + list(
        (tweet.get("extended_entities") or {}).get("media") or []
    )
    for item in media:
        if item.get("url"):
            text = text.replace(item["url"], " ")
    for item in entities.get("urls") or []:
        short, full = item.get("url"), item.get("expanded_url")
        if short and full:
            text = text.replace(short, " " if _STATUS_URL.fullmatch(full) else full)
    # Media links without entity data (older archives) are the t.co links at the end.
    text = _TRAILING_TCO.sub("", text)
    if start is None and (
        tweet.get("in_reply_to_status_id_str") or tweet.get("in_reply_to_screen_name")
    ):
        # No range (long posts, edited archives): every leading @name is taken as added.
        text = _REPLY_PREFIX.sub("", text.lstrip())
    text = html.unescape(text)
    # Replacing links left double spaces; keep the author's newlines.
    return "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.split("\n")).strip()


Kept = dict[str, tuple[dt.datetime, str, dict[str, Any]]]
# The versions of each edited post found in the archive, by the id of its first version.
Edits = dict[str, dict[str, dt.datetime | None]]


def _keep(item: Any, dropped: dict[str, int], kept: Kept, notes: Notes, edits: Edits) -> None:
    # One item of a tweets file: kept as (time, text, tweet) under its id, or counted as dropped.
    if not isinstance(item, dict):
        raise TypeError(f"it is {json_kind(item)}, not an object")
    tweet = item.get("tweet", item)
    if not isinstance(tweet, dict):
        raise TypeError(f'"tweet" is {json_kind(tweet)}, not an object')
    for key in ("in_reply_to_status_id_str", "in_reply_to_screen_name"):
        if not isinstance(tweet.get(key), str | None):
            raise TypeError(f"{key} is not a string")
    raw = tweet.get("full_text") or tweet.get("text") or ""
    if raw.startswith("RT @") or "retweeted_status" in tweet:
        dropped["retweet"] = dropped.get("retweet", 0) + 1
        return
    when = _parse_time(tweet.get("created_at"))
    chain = _edit_chain(tweet)
    if chain:  # a version, kept or not: a later one replaces the earlier ones (_latest_edits)
        edits.setdefault(chain[0], {})[str(tweet.get("id_str") or tweet.get("id"))] = when
    if when is not None and notes:
        tweet = _with_note(tweet, when, notes)
    text = clean_text(tweet)
    reason = _no_words(tweet, raw, text)
    if reason:
        dropped[reason] = dropped.get(reason, 0) + 1
        return
    tid = str(tweet.get("id_str") or tweet.get("id"))
    if when is None:
        dropped["no timestamp"] = dropped.get("no timestamp", 0) + 1
        return
    kept[tid] = (when, text, tweet)


def _edit_chain(tweet: dict[str, Any]) -> list[str]:
    """The ids of every version of an edited post, first version first; [] if never edited."""
    # X writes each version of an edited post as a post of its own, with the chain of ids in
    # edit_info: "initial" on the first version, "edit" (with the chain's editControlInitial)
    # on the later ones. A post never edited lists only its own id.
    info = tweet.get("edit_info")
    if not isinstance(info, dict):
        return []
    edit = info.get("edit")
    control = edit.get("editControlInitial") if isinstance(edit, dict) else info.get("initial")
    ids = control.get("editTweetIds") if isinstance(control, dict) else None
    first = edit.get("initialTweetId") if isinstance(edit, dict) else None
    chain = [str(i) for i in ids] if isinstance(ids, list) else []
    if isinstance(first, str | int) and str(first) not in chain:
        chain.insert(0, str(first))  # a chain cut short still names the first version
    return chain if len(chain) > 1 else []


def _latest_edits(kept: Kept, edits: Edits, dropped: dict[str, int]) -> dict[str, str]:
    """Keep only the last version of each edited post; returns {earlier version: last one}."""
    # Every version is in the archive, a typo and its fix as two posts: only the last is what
    # the person meant to say. It keeps the time the post first went up, so a self-thread
    # whose first post was edited later stays in order, and replies to an earlier version
    # (a self-thread goes on from the id it answered) join the last one's thread.
    replaced: dict[str, str] = {}
    for first, found in edits.items():
        versions = {**({first: kept[first][0]} if first in kept else {}), **found}
        if len(versions) < 2:
            continue
        last = max(versions, key=lambda v: (len(v), v))  # ids grow with time
        posted = min((w for w in versions.values() if w is not None), default=None)
        for version in versions:
            if version != last and version in kept:
                del kept[version]
                dropped["edited"] = dropped.get("edited", 0) + 1
                replaced[version] = last
        if last in kept and posted is not None:
            kept[last] = (posted, *kept[last][1:])
    return replaced


def _no_words(tweet: dict[str, Any], raw: str, text: str) -> str | None:
    """Why a post with no words of its own is dropped ("link", "media", …); None if it has any."""
    if only_links(text):
        return "link"  # something shared, nothing written (as Messenger's and DMs' rule)
    if text:
        return None
    entities = tweet.get("entities") or {}
    if entities.get("media"):
        return "media"
    links = entities.get("urls")
    quoted = (
        _STATUS_URL.fullmatch(str(u.get("expanded_url") or ""))
        for u in (links if isinstance(links, list) else [])
        if isinstance(u, dict)
    )
    if any(quoted):
        return "retweet"  # a quote with no comment: only the quoted post's words
    # Older archives have no entity data: their bare t.co links are photos and videos.
    return "media" if "t.co/" in raw else "empty"


def _empty_dm_reason(create: dict[str, Any], media: list[dict], links: list[dict]) -> str:
    """Why a DM with nothing left once cleaned is dropped: "media", "link" or "empty"."""
    if create.get("mediaUrls") or media:
        return "media"
    # A shared post: its status link goes as a quoted post's does, and sharing is not
    # writing (as a post of only links is "link").
    return "link" if links else "empty"


@register("twitter")
def import_twitter(path: Path) -> Iterator[Conversation]:
    """Yield a Conversation per post or self-thread (opened by a topic prompt), then per DM."""
    with open_export(path) as export:
        sources = _data_files(export, _TWEET_FILES)
        has_dms = bool(_data_files(export, _DM_FILES))
        if not sources and not has_dms:
            raise ImportErrorMessage(
                f"No tweets or direct messages in {path}: expected data/tweets.js (or tweet.js) "
                "or data/direct-messages.js from the X/Twitter archive"
            )
        owner = _owner(export)
        notes = _notes(export)
        dropped: dict[str, int] = {}
        kept: Kept = {}
        edits: Edits = {}
        for source, name in sources:
            for i, item in enumerate(_load_ytd(source, name), 1):
                try:
                    _keep(item, dropped, kept, notes, edits)
                except MALFORMED as exc:
                    raise ImportErrorMessage(
                        f"{source.where(name)}: post {i} is malformed ({exc})"
                    ) from None
        maybe_owner: frozenset[str] = frozenset()
        if owner is None:
            owner, maybe_owner = _inferred_owner(export, kept.values())
        replaced = _latest_edits(kept, edits, dropped)

    # A self-thread is a chain of replies to your own kept posts; its root is the first
    # post whose parent is not one of them.
    def root_of(tid: str) -> str:
        seen = set()
        while tid not in seen:
            seen.add(tid)
            parent = kept[tid][2].get("in_reply_to_status_id_str")
            parent = replaced.get(parent, parent) if parent else parent
            if not parent or parent not in kept:
                return tid
            tid = str(parent)
        return tid

    threads: dict[str, list[str]] = {}
    for tid in kept:
        threads.setdefault(root_of(tid), []).append(tid)

    first = True
    for root in sorted(threads, key=lambda r: (kept[r][0], r)):
        ids = sorted(threads[root], key=lambda t: (kept[t][0], t))
        when, text, tweet = kept[root]
        replying = tweet.get("in_reply_to_screen_name")
        if replying and owner.aliases and replying.lower() == owner.aliases[0].lower():
            replying = None
        prompt = topic_prompt(text, reply_to=replying, thread=len(ids) > 1)
        conv = Conversation(
            id=f"twitter/{root}",
            title=text[:60],
            participants=[owner.sender],
            messages=[Message(sender=PROMPT_SENDER, text=prompt, timestamp=when)],
            # The prompt asks for the whole thread: posts added hours or days later belong
            # to it, so --gap-hours must not cut them off into a conversation of their own.
            one_session=True,
        )
        for tid in ids:
            conv.messages.append(
                Message(
                    sender=owner.sender,
                    text=kept[tid][1],
                    timestamp=kept[tid][0],
                    sender_id=owner.sender_id,
                    aliases=owner.aliases,
                )
            )
        if first:  # export-wide drops (retweets…) are reported once, on the first thread
            conv.dropped.update(dropped)
            first = False
        yield conv
    if first and dropped:
        yield Conversation(
            id="twitter/dropped", title="", participants=[owner.sender], dropped=dropped
        )
    if has_dms:
        # Read again, file by file: only one DM file's conversations are held at a time.
        handles = _handles(kept.values())
        with open_export(path) as export:
            for source, name in _data_files(export, _DM_FILES):
                yield from _dm_file(source, name, owner, handles, maybe_owner)


def _handles(posts: Any) -> dict[str, str]:
    """@handles by account id, from the mentions and reply targets of your posts."""
    # DMs name people by account id only; someone you mentioned or answered has a handle.
    handles: dict[str, str] = {}
    for _when, _text, tweet in posts:
        mentions = (tweet.get("entities") or {}).get("user_mentions")
        pairs = [
            (m.get("id_str"), m.get("screen_name"))
            for m in (mentions if isinstance(mentions, list) else [])
            if isinstance(m, dict)
        ]
        pairs.append((tweet.get("in_reply_to_user_id_str"), tweet.get("in_reply_to_screen_name")))
        for uid, name in pairs:
            # An edited archive may hold anything here: only ids and names that are text.
            if isinstance(uid, str | int) and uid != "" and isinstance(name, str) and name:
                handles[str(uid)] = "@" + name
    return handles


def _dm_file(
    source: Export,
    name: str,
    owner: Message,
    handles: dict[str, str],
    maybe_owner: frozenset[str] = frozenset(),
) -> Iterator[Conversation]:
    """The conversations of one direct-messages file."""
    group = _is_group_file(name)
    for i, item in enumerate(_load_ytd(source, name), 1):
        try:
            conv = _dm_conversation(item, owner, handles, group, maybe_owner)
        except MALFORMED as exc:
            raise ImportErrorMessage(
                f"{source.where(name)}: conversation {i} is malformed ({exc})"
            ) from None
        yield conv


def _dm_conversation(
    item: dict[str, Any],
    owner: Message,
    handles: dict[str, str],
    group: bool,
    maybe_owner: frozenset[str] = frozenset(),
) -> Conversation:
    """One DM conversation: your messages under your name, the others' under their handle or id."""
    dm = item["dmConversation"]
    conv = Conversation(
        id=f"twitter/dm/{dm['conversationId']}", title="", participants=[], is_group=group
    )
    rows: list[tuple[dt.datetime, int, Message]] = []
    for entry in dm["messages"]:
        create = entry.get("messageCreate")
        if create is None:  # a group's joins, leaves and renames
            conv.drop("system")
            continue
        links = [u for u in create.get("urls") or [] if isinstance(u, dict)]
        media = [u for u in links if _DM_MEDIA_URL.fullmatch(str(u.get("expanded") or ""))]
        text = clean_text(
            {
                "full_text": create.get("text") or "",
                "entities": {
                    # The attachment's link goes like a post's photo link; a caption stays.
                    "media": [{"url": u.get("url")} for u in media],
                    "urls": [
                        {"url": u.get("url"), "expanded_url": u.get("expanded")}
                        for u in links
                        if u not in media
                    ],
                },
            }
        )
        if not text:
            conv.drop(_empty_dm_reason(create, media, links))
            continue
        if only_links(text):  # a link to another site, shared: as posts' and Messenger's rule
            conv.drop("link")
            continue
        when = _parse_time(create.get("createdAt"))
        if when is None:
            conv.drop("no timestamp")
            continue
        sender = str(create["senderId"])
        if sender == owner.sender_id:
            msg = Message(owner.sender, text, when, owner.sender_id, owner.aliases)
        else:
            # Either of the two may be the owner: --me naming neither is then an error.
            maybe = (UNNAMED_OWNER,) if sender in maybe_owner else ()
            msg = Message(handles.get(sender, sender), text, when, sender, maybe)
        # The archive lists a conversation newest first; ids grow with time and break ties.
        mid = str(create.get("id") or "")
        order = int(mid) if mid.isascii() and mid.isdigit() and len(mid) < 40 else 0
        rows.append((when, order, msg))
    rows.sort(key=lambda row: row[:2])
    conv.messages = [msg for _when, _mid, msg in rows]
    others = sorted({m.sender for m in conv.messages if m.sender != owner.sender})
    conv.participants = [owner.sender, *others]
    conv.title = "DM with " + ", ".join(others) if others else "DM"
    return conv
