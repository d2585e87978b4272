"""Numeric dates and times as a device writes them in its user's locale (WhatsApp, Discord CSV)."""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from collections.abc import Iterable

from phischer.importers.base import ImportErrorMessage

# Right-to-left locales put bidi marks around the numbers ("٢٤\u200f/٤\u200f/٢٠٢٢"): the
# patterns below allow them, and `plain` drops them before the numbers are read.
_MARKS = "\u200e\u200f\u061c"
MARK = f"[{_MARKS}]*"
# A date is three numbers; which is day and which is month is decided per file (see
# `date_order`). Korean and Hungarian write "2023. 12. 31." (spaces, a last dot), Croatian
# "31. 12. 2023."; iOS with the Buddhist calendar and English adds " BE" ("3/18/2566 BE").
DATE = (
    rf"\d{{1,4}}{MARK}[/.\-] ?{MARK}\d{{1,2}}{MARK}[/.\-] ?{MARK}\d{{1,4}}{MARK}"
    r"(?:(?<=\d)\.|(?<=\d) BE)?"
)
# The 12-hour marker after the time: English "PM", "pm", "p.m.", Spanish "p. m." (often with
# a no-break space inside), Arabic "م"/"ص", Persian "ب.ظ"/"ق.ظ", Greek "μ.μ."/"π.μ.". Chinese,
# Japanese and Korean put theirs before the time ("下午9:15", "午後9:15", "오후 9:15").
_LATIN_AM_PM = r"[AaPp]\.?\s?[Mm]\.?"
_AFTER = rf"(?:{_LATIN_AM_PM}|[صم]|[قب]\.ظ\.?|[πμ]\.\s?μ\.)"
_BEFORE = r"(?:上午|下午|午前|午後|오전|오후)"
_PM = frozenset({"م", "ب.ظ", "ب.ظ.", "下午", "午後", "오후"})
# Seconds come from iOS; a time may be dotted ("21.15": Finnish, Danish, Indonesian).
TIME = rf"(?:{_BEFORE}\s?)?\d{{1,2}}[:.]\d{{2}}(?:[:.]\d{{2}})?(?:\s*{MARK}{_AFTER})?"
_DATE_PARTS = re.compile(r"^(\d{1,4})[/.\-] ?(\d{1,2})[/.\-] ?(\d{1,4})(\.| BE)?$")
# Korean's short date, "23. 12. 31.": the one locale that writes a two-digit year with
# spaces and a last dot, and it writes it first (Croatian and Hungarian write four digits).
_SHORT_YEAR_FIRST = re.compile(r"^\d{1,2}\. \d{1,2}\. \d{1,2}\.$")
_TIME_PARTS = re.compile(
    rf"^(?:({_BEFORE})\s?)?(\d{{1,2}})[:.](\d{{2}})(?:[:.](\d{{2}}))?(?:\s*({_AFTER}))?$"
)
_LATIN_MARKER = re.compile(rf"{_LATIN_AM_PM}$")


class CalendarError(ValueError):
    """A year from another calendar than the Gregorian (Persian 1402, Hijri 1445)."""


def plain(text: str) -> str:
    """`text` with ASCII digits for any script's digits (٢, ۲, २, ২, ๒, ２…) and no bidi marks."""
    # Only for reading dates and times: a message's own text is never passed through this.
    if text.isascii():
        return text
    text = text.translate(dict.fromkeys(map(ord, _MARKS)))
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)


def latin_am_pm(time: str) -> bool:
    """Whether a time ends with the Latin AM/PM marker ("PM", "p.m.", "p. m.")."""
    return _LATIN_MARKER.search(time.strip()) is not None


def date_order(dates: Iterable[str], *, twelve_hour: bool, where: str) -> str:
    """Decide "dmy", "mdy" or "ymd" for a file's numeric dates.

    A first field above 12 means day-first, a second field above 12 means month-first, a
    four-digit first field (or Korean's "23. 12. 31.") means year-first. When every date is
    ambiguous (all fields ≤ 12), "." separators and 24-hour clocks mean day-first (Europe and
    most of the world), and a Latin AM/PM (`twelve_hour`) means month-first (the US locale).
    """
    day_first = month_first = False
    dotted = False
    for date in set(map(plain, dates)):
        m = _DATE_PARTS.match(date)
        if m is None:
            continue
        if len(m[1]) == 4 or _SHORT_YEAR_FIRST.match(date):
            return "ymd"
        a, b = int(m[1]), int(m[2])
        day_first |= a > 12
        month_first |= b > 12
        dotted |= "." in date
    if day_first and month_first:
        raise ImportErrorMessage(
            f"{where}: dates mix day-first and month-first orders; export the chat again "
            "without editing the file"
        )
    if day_first:
        return "dmy"
    if month_first:
        return "mdy"
    return "mdy" if twelve_hour and not dotted else "dmy"


def to_datetime(date: str, time: str, order: str) -> dt.datetime:
    """Combine a numeric date in `order` ("dmy"/"mdy"/"ymd") and a 12/24-hour time."""
    return dt.datetime(*_date_fields(date, order), *_time_fields(time))


# Chats repeat the same dates and minutes many times: parse each string once.
@functools.lru_cache(maxsize=4096)
def _date_fields(date: str, order: str) -> tuple[int, int, int]:
    m = _DATE_PARTS.match(plain(date))
    if m is None:
        raise ValueError(f"unrecognised date: {date}")
    f1, f2, f3 = int(m[1]), int(m[2]), int(m[3])
    if order == "ymd":
        year, month, day = f1, f2, f3
    elif order == "mdy":
        month, day, year = f1, f2, f3
    else:
        day, month, year = f1, f2, f3
    if year < 100:
        year += 2000
    elif year >= 2400:
        # Thai phones count years in the Buddhist era (2566 = 2023); no Gregorian year this far
        # ahead is in a chat.
        year -= 543
    elif year < 1900:
        # Read as Gregorian, a Persian or Hijri date would be centuries off, and its months
        # would not even fit (1402/2/31): say so rather than import wrong times.
        raise CalendarError(
            f"year {year} in {date} is not a Gregorian year (a Persian or Hijri calendar?): "
            "set the phone's calendar to Gregorian and export the chat again"
        )
    dt.date(year, month, day)  # ValueError for 31/02 here, where it is cached
    return year, month, day


@functools.lru_cache(maxsize=4096)
def _time_fields(time: str) -> tuple[int, int, int]:
    t = _TIME_PARTS.match(plain(time).strip())
    if t is None:
        raise ValueError(f"unrecognised time: {time}")
    hour, minute, second = int(t[2]), int(t[3]), int(t[4] or 0)
    marker = t[1] or t[5]
    if marker:
        pm = marker in _PM or marker[0] in "Ppμ"  # Latin "PM", Greek "μ.μ."
        hour = hour % 12 + (12 if pm else 0)
    return hour, minute, second
