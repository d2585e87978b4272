"""The user turn for a post with no conversation partner, derived offline from the post itself."""

from __future__ import annotations

import re
from typing import Any

from phischer.importers.base import LINK

_HASHTAG = re.compile(r"(?<![\w&])#(\w+)")
_MENTION = re.compile(r"(?<!\w)@(\w{1,50})")
_WORD = re.compile(r"[^\W_](?:[\w'’-]*[^\W_])?")

# Common English function words and fillers: they never name a topic.
_STOPWORD_TEXT = """
    a about above after again against all almost also am an and any are aren't as at be
    because been before being below between both but by can can't cannot could couldn't did
    didn't do does doesn't doing don't down during each even ever every few for from further
    get gets getting got had hadn't has hasn't have haven't having he he'd he'll he's her here
    here's hers herself him himself his how how's however i i'd i'll i'm i've if in into is
    isn't it it's its itself just let's like lol maybe me more most much must mustn't my
    myself need never no nor not now of off often oh ok okay on once one only or other ought
    our ours ourselves out over own really same say says shan't she she'd she'll she's should
    shouldn't so some still such than that that's the their theirs them themselves then there
    there's these they they'd they'll they're they've thing things this those though through
    to today too under until up upon us very was wasn't we we'd we'll we're we've well were
    weren't what what's when when's where where's whether which while who who's whom why why's
    will with won't would wouldn't yeah yes yet you you'd you'll you're you've your yours
    yourself yourselves actually already another anyway back came come comes coming done
    finally going gone gonna make made many new next pretty said see seen take took want wanna
    went
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def key_phrases(text: str, limit: int = 2) -> list[str]:
    """The `limit` longest runs of content words in `text`, in order of appearance."""
    # RAKE, cut down: stopwords, short words and punctuation break the text into runs of
    # content words; a longer run says more about the topic. Runs are capped at 3 words.
    runs: list[list[str]] = []
    current: list[str] = []
    pos = 0
    for match in _WORD.finditer(text):
        word = match.group(0).lower()
        gap = text[pos : match.start()]
        pos = match.end()
        if gap.strip() and current:  # punctuation between words ends a phrase
            runs.append(current)
            current = []
        if word in _STOPWORDS or len(word) < 3 or word.isdigit():
            if current:
                runs.append(current)
                current = []
            continue
        current.append(word)
    if current:
        runs.append(current)
    ranked = sorted(
        range(len(runs)), key=lambda i: (-min(len(runs[i]), 3), -len(" ".join(runs[i])), i)
    )
    chosen = sorted(ranked[:limit])
    seen: list[str] = []
    for i in chosen:
        phrase = " ".join(runs[i][:3])
        if phrase not in seen:
            seen.append(phrase)
    return seen


def topic_prompt(text: str, *, reply_to: str | None = None, thread: bool = False) -> str:
    """The user turn for a post with no partner: what it is about, derived from the post.

    Rule: up to 2 key phrases (longest runs of non-stopwords, see `key_phrases`), then up to
    3 hashtags, then up to 2 @mentions, all in order of appearance and deduplicated:
    "Write a post about X, Y, #tag, @name." A self-thread says "a thread"; a reply to
    someone else says "a reply to @name". A post with no topic words gets "Write a post."
    """
    hashtags = _dedupe("#" + h for h in _HASHTAG.findall(text))[:3]
    mentions = _dedupe("@" + m for m in _MENTION.findall(text))[:2]
    plain = _MENTION.sub(" ", _HASHTAG.sub(" ", LINK.sub(" ", text)))
    topics = _dedupe(key_phrases(plain) + hashtags + mentions)
    kind = "a thread" if thread else "a post"
    if reply_to:
        kind = f"a reply to @{reply_to}" if not thread else f"a thread replying to @{reply_to}"
    if not topics:
        return f"Write {kind}."
    return f"Write {kind} about {', '.join(topics)}."


def _dedupe(items: Any) -> list[str]:
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(item.lower(), item)
    return list(seen.values())
