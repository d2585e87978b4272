"""SMS keyword parsing: #persona, #list, #who, #reset, opt-out/opt-in words, HELP."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Twilio's default opt-out / opt-in / help keywords (Advanced Opt-Out). Twilio still forwards
# them to the webhook, so we record them ourselves and never let the model answer.
OPT_OUT_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"}
)
OPT_IN_WORDS = frozenset({"start", "yes", "unstop"})
HELP_WORDS = frozenset({"help", "info"})
HASH_COMMANDS = frozenset({"list", "who", "reset"})
RESERVED_WORDS = OPT_OUT_WORDS | OPT_IN_WORDS | HELP_WORDS | HASH_COMMANDS


@dataclass(frozen=True)
class Command:
    """A parsed SMS command.

    action: optout, optin, help, list, who, reset, switch (keyword set), or chat (not a command).
    """

    action: str
    keyword: str | None = None
    text: str = ""
    # Twilio answered it already (Advanced Opt-Out sends its own STOP/START/HELP replies).
    answered: bool = False


# Twilio's OptOutType webhook parameter (sent with Advanced Opt-Out, for its keywords in any
# language) and the command each value means.
OPT_OUT_TYPES = {"STOP": "optout", "START": "optin", "HELP": "help"}


def twilio_keyword(body: str, opt_out_type: str) -> Command | None:
    """The command Twilio recognised in this text (OptOutType), if it recognised one."""
    action = OPT_OUT_TYPES.get(opt_out_type.strip().upper())
    return Command(action, text=body.strip(), answered=True) if action else None


def parse(body: str) -> Command:
    """Classify an SMS body; a command must be the whole message (case-insensitive)."""
    stripped = body.strip()
    # Phones add trailing punctuation ("Stop.", a CJK keyboard's "。") and people add it too.
    word = _folded(stripped).rstrip(".!。").strip().lower()
    if word in OPT_OUT_WORDS:
        return Command("optout")
    if word in OPT_IN_WORDS:
        return Command("optin")
    if word in HELP_WORDS:
        return Command("help")
    if starts_hash(stripped) and len(stripped) > 1 and not stripped[1].isspace():
        # The keyword ends at any whitespace ("#ada hi", "#ada\nhi", "#ada\thi") or at the
        # sentence's punctuation, which no keyword holds: "#who?", "#dex!", and "#dex,hi"
        # typed without a space, which is "#dex hi". Other characters stay in it ("#ada's",
        # "#café"): an unknown keyword, named whole in the reply, not a guess at a persona.
        end = _KEYWORD_END.search(stripped, 1)
        keyword = _folded(stripped[1 : end.start() if end else None]).lower()
        if keyword in HASH_COMMANDS:
            # "#list please", "#who is this": the command; the words after it ask nothing more.
            return Command(keyword)
        if keyword:
            rest = stripped[end.end() :] if end else ""
            return Command("switch", keyword=keyword, text=rest.strip())
    return Command("chat", text=stripped)


# Where a keyword ends: whitespace, or a run of sentence punctuation (ASCII, the full-width
# forms a CJK keyboard types, 。 and 、, an ellipsis), which is dropped with it.
_SENTENCE_MARKS = ".!?,;:\uff0e\uff01\uff1f\uff0c\uff1b\uff1a\u3002\u3001\u2026"
_KEYWORD_END = re.compile(rf"[{re.escape(_SENTENCE_MARKS)}]+|\s")


def starts_hash(text: str) -> bool:
    """Whether `text` (stripped) opens with a #, as typed on any keyboard (＃ full width too)."""
    return _folded(text[:1]) == "#"


def _folded(text: str) -> str:
    """`text` as a command word reads it: full-width "ＳＴＯＰ" and "＃ｌｉｓｔ" are STOP and #list."""
    # A Japanese or Chinese keyboard in full-width mode types these, and a texter who sends
    # ＳＴＯＰ means STOP. Only the command is read so: the text a persona answers stays as typed.
    return unicodedata.normalize("NFKC", text)
