"""SMS keyword parsing: #persona, #list, #who, #reset, opt-out/opt-in words, HELP."""

from __future__ import annotations

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
        # The keyword ends at any whitespace: "#ada hi", "#ada\nhi" and "#ada\thi" alike.
        head, *tail = stripped[1:].split(None, 1)
        rest = tail[0] if tail else ""
        # "#who?", "#dex!": punctuation after the keyword is the sentence's, not the name's.
        keyword = _folded(head).rstrip(".!?,;:").lower()
        if keyword in HASH_COMMANDS:
            # "#list please", "#who is this": the command; the words after it ask nothing more.
            return Command(keyword)
        if keyword:
            return Command("switch", keyword=keyword, text=rest.strip())
    return Command("chat", text=stripped)


def starts_hash(text: str) -> bool:
    """Whether `text` (stripped) opens with a #, as typed on any keyboard (＃ full width too)."""
    return _folded(text[:1]) == "#"


def _folded(text: str) -> str:
    """`text` as a command word reads it: full-width "ＳＴＯＰ" and "＃ｌｉｓｔ" are STOP and #list."""
    # A Japanese or Chinese keyboard in full-width mode types these, and a texter who sends
    # ＳＴＯＰ means STOP. Only the command is read so: the text a persona answers stays as typed.
    return unicodedata.normalize("NFKC", text)
