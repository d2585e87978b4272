"""Seeded random fuzzing of the webhook through the real app: malformed but signed, and forged.

Unlike test_webhook_fuzz (hypothesis, which shrinks), these throw one fixed, reproducible
stream of requests (random.Random(SEED)) at one app and check what was stored, not only the
status: a signed text's stored body is the one sent, a forged one stores nothing, and status
callbacks never move a reply's delivery backwards.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode
from xml.etree import ElementTree

import sqlalchemy as sa
from flask import Flask
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from phischer.models import Contact, Message

SEED = 4242
FORM = "application/x-www-form-urlencoded"
BASE = "http://localhost"

# Characters a Body can hold that break naive code: NUL and C0 controls, DEL and C1, bidi
# overrides, BOM, noncharacters, XML and form-encoding metacharacters, astral emoji.
ODD = list("\x00\x01\x07\x08\x0b\x0c\x1b\x1f\x7f\x85\x9f\u2028\u202e\ufeff\ufffe\uffff")
ODD += list("<>&\"'%+=;#?/\\ \t\r\n") + ["😀", "👩‍👩‍👧", "e\u0301", "]]>", "&amp;", "%zz", "%00"]
WORDS = ["hey", "how are you", "good night", "#list", "#who", "#ada", "#bo hi", "stop", "STOP."]
WORDS += ["start", "help", "#reset", "#", "#\x05x", "yes", "ARRET", "what do you do for work"]
# Bytes no UTF-8 encoder produces (a CESU-8 lone surrogate, past U+10FFFF, stray
# continuation bytes) and broken percent-escapes: what only a broken client sends.
JUNK = [b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80", b"%", b"%G1"]
JUNK += [b"%e", b"%ff%fe", b"%ED%A0%80", b"%00", b"&&&", b"==", b"\x00", b"%C0%80"]
FROMS = ["+15550100", "+15550101", "+447700900123", "whatsapp:+15550102", "whatsapp:", "12345"]
FROMS += ["client:al", "messenger:1234567", "rcs:+15550103", " +15550100 ", "+1 (555) 010-0100"]
FROMS += ["+1" + "5" * 40, "", "   ", "+1555\x000100", "+1555\u2028", "\ufffd", "whatsapp:+1555😀"]
COUNTS = ["0", "1", "10", "-1", "", " 2 ", "1.5", "1e3", "0x10", "\u0663", "NaN", "9" * 40]
COUNTS += ["99999999999999999999", "-99999999999999999999", "२", "½", "１"]
OTHER_TYPES = ["application/json", "text/plain", "multipart/form-data; boundary=zz", "", None]
OTHER_TYPES += [f"{FORM}; charset=latin-1", "APPLICATION/X-WWW-FORM-URLENCODED"]


def text(rng: random.Random, size: int = 12) -> str:
    """A short string mixing words and odd characters."""
    parts = [rng.choice(WORDS) if rng.random() < 0.3 else rng.choice(ODD) for _ in range(size)]
    return "".join(parts)[: rng.randint(0, 200)]


def body_text(rng: random.Random) -> str:
    """A Body: a word, odd characters, or very long."""
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(WORDS)
    if roll < 0.9:
        return text(rng, rng.randint(0, 30))
    return text(rng, 8) * rng.randint(100, 3000)  # up to ~600 KB: over the 64 KB cap


@dataclass
class Case:
    """One request and what its signature covers."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    mode: str = "form"  # form, multipart, raw (bytes), json, empty
    raw: bytes = b""
    content_type: str | None = FORM
    query: str = ""
    signing: str = "signed"  # signed, missing, wrong_token, tampered, other_url, junk

    def body(self) -> bytes:
        """The bytes posted (form and raw modes)."""
        if self.mode == "form":
            return urlencode(self.pairs).encode("ascii")
        if self.mode == "json":
            return json.dumps(dict(self.pairs)).encode()
        return self.raw

    def signed_params(self) -> MultiDict:
        """What a client signs: its own fields (or, for raw bytes, how a UTF-8 reader sees them)."""
        is_form = (self.content_type or "").split(";")[0].strip().lower() == FORM
        if self.mode == "raw" and is_form:
            return MultiDict(parse_qsl(self.raw.decode("utf-8", "replace"), keep_blank_values=True))
        if self.mode in ("form", "multipart"):
            return MultiDict(self.pairs)
        return MultiDict()  # JSON, text, empty: no form fields

    def url(self, path: str) -> str:
        """The URL Twilio would have signed."""
        return BASE + path + (f"?{self.query}" if self.query else "")


def twilio_fields(rng: random.Random, sid: str) -> list[tuple[str, str]]:
    """An inbound post: Twilio's usual fields, some left out, odd values, extra and repeated names."""
    pairs = [
        ("MessageSid", sid),
        ("AccountSid", "AC" + "0" * 32),
        ("From", rng.choice(FROMS) if rng.random() < 0.4 else "+1555010" + str(rng.randint(0, 9))),
        ("To", "+15550199"),
        ("Body", body_text(rng)),
        ("NumMedia", rng.choice(COUNTS) if rng.random() < 0.5 else "0"),
    ]
    extras = [
        ("SmsMessageSid", sid),
        ("NumSegments", rng.choice(COUNTS)),
        ("MediaUrl0", "https://api.twilio.com/x.jpg"),
        ("MediaContentType0", rng.choice(["image/jpeg", text(rng)])),
        ("OptOutType", rng.choice(["STOP", "START", "HELP", "stop", " Help ", "", "NOPE"])),
        ("ProfileName", text(rng)),
        ("WaId", "15550102"),
        ("ButtonText", text(rng)),
        ("ButtonPayload", text(rng)),
        ("Latitude", rng.choice(["51.5", "-0.1", "NaN", "", "91", text(rng)])),
        ("Longitude", rng.choice(["-0.12", "200", "", text(rng)])),
        ("MessageType", rng.choice(["text", "location", "image", "button", "interactive", ""])),
        (text(rng, 3), text(rng)),
    ]
    pairs += rng.sample(extras, rng.randint(0, 4))
    for _ in range(rng.randint(0, 2)):
        if rng.random() < 0.3:
            pairs.remove(rng.choice(pairs))  # a field Twilio always sends, left out
        if pairs and rng.random() < 0.3:
            name, _ = rng.choice(pairs)
            pairs.append((name, text(rng)))  # a repeated name
    rng.shuffle(pairs)
    return pairs


def make_case(rng: random.Random, sid: str) -> Case:
    """A random inbound request: mostly signed, in every shape a broken client could send."""
    case = Case(pairs=twilio_fields(rng, sid))
    roll = rng.random()
    if roll < 0.15:
        base = urlencode(case.pairs).encode("ascii")
        at = rng.randint(0, len(base))
        splice = b"".join(rng.choice(JUNK) for _ in range(rng.randint(1, 4)))
        case.mode, case.raw = "raw", base[:at] + splice + base[at:]
        case.content_type = FORM if rng.random() < 0.7 else rng.choice(OTHER_TYPES)
    elif roll < 0.25:
        case.mode, case.content_type = "multipart", None
    elif roll < 0.3:
        case.mode, case.content_type = "json", "application/json"
    elif roll < 0.33:
        case.mode, case.raw, case.content_type = "empty", b"", rng.choice([FORM, *OTHER_TYPES])
    if rng.random() < 0.15:
        case.query = rng.choice(["a=1", "x=%zz&y", "From=%2B15550999", "reply=1", quote(text(rng))])
    if rng.random() < 0.25:
        kinds = ["missing", "wrong_token", "tampered", "other_url", "junk"]
        case.signing = rng.choice(kinds)
    return case


def headers_for(case: Case, token: str, path: str) -> dict[str, str]:
    """X-Twilio-Signature for the case's signing."""
    params, url = case.signed_params(), case.url(path)
    validator = RequestValidator(token)
    if case.signing == "signed":
        return {"X-Twilio-Signature": validator.compute_signature(url, params)}
    if case.signing == "missing":
        return {}
    if case.signing == "junk":
        return {"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl\u00e9"}
    if case.signing == "wrong_token":
        return {"X-Twilio-Signature": RequestValidator(token + "x").compute_signature(url, params)}
    if case.signing == "tampered":
        params = MultiDict(params)
        params.add("Body", "signed, but not what was sent")
        return {"X-Twilio-Signature": validator.compute_signature(url, params)}
    if case.signing == "other_url":
        return {"X-Twilio-Signature": validator.compute_signature(BASE + "/elsewhere", params)}
    raise AssertionError(case.signing)


def post(app: Flask, case: Case, path: str = "/sms") -> Any:
    """Send the case through the Flask test client."""
    token = app.extensions["phischer"].settings.auth_token()
    kwargs: dict[str, Any] = {"headers": headers_for(case, token, path)}
    if case.query:
        kwargs["query_string"] = case.query
    if case.mode == "multipart":
        kwargs["data"] = MultiDict(case.pairs)
        kwargs["content_type"] = "multipart/form-data"
    else:
        kwargs["data"] = case.body()
        if case.content_type is not None:
            kwargs["content_type"] = case.content_type
    return app.test_client().post(path, **kwargs)


def messages(app: Flask) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def counts(app: Flask) -> tuple[int, int]:
    with app.extensions["phischer"].db.read() as session:
        return (
            session.scalar(sa.select(sa.func.count()).select_from(Message)),
            session.scalar(sa.select(sa.func.count()).select_from(Contact)),
        )


def assert_twiml(response: Any) -> None:
    """A TwiML document Twilio can read: <Response> holding only <Message>s."""
    assert response.mimetype == "text/xml", response.mimetype
    root = ElementTree.fromstring(response.data)
    assert root.tag == "Response"
    assert all(child.tag == "Message" for child in root)


def no_errors_logged(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_random_inbound_posts_never_fail_and_store_what_was_sent(app: Flask, caplog: Any) -> None:
    """800 signed-but-malformed and forged posts: no 5xx, no ERROR, forged stores nothing."""
    rng = random.Random(SEED)
    sent: dict[str, str] = {}  # MessageSid -> the Body its first signed post carried
    for i in range(800):
        case = make_case(rng, f"SM{i:032x}")
        if sent and rng.random() < 0.05:  # Twilio's retry of an earlier text
            case = Case(pairs=[("MessageSid", rng.choice(list(sent))), ("From", "+15550100")])
        caplog.clear()
        before = counts(app)
        response = post(app, case)
        where = (i, case)
        assert response.status_code < 500, where
        assert not no_errors_logged(caplog), (no_errors_logged(caplog), where)
        assert_twiml(response)
        if case.signing != "signed":
            assert response.status_code in (403, 413), where
            assert counts(app) == before, where
            continue
        if response.status_code != 200:
            # Raw bytes: how a reader repairs broken UTF-8 or escapes is its own (werkzeug keeps
            # "%C0%80" as is, a UTF-8 reader makes it U+FFFD), so a signature over one reading
            # may not match the other: a refusal then, never a crash.
            refusals = (400, 403, 413) if case.mode == "raw" else (400, 413)
            assert response.status_code in refusals, where
            assert counts(app) == before, where
            continue
        if case.mode not in ("form", "multipart"):
            continue  # bytes a UTF-8 reader repairs: checked below, not compared
        form = MultiDict(case.pairs)
        sid = form.get("MessageSid", "").strip() or form.get("SmsMessageSid", "").strip()
        # A Body of only spaces is a tapped button's when it has one: its label is the text.
        said = form.get("Body", "") if form.get("Body", "").strip() else form.get("ButtonText", "")
        # PostgreSQL text cannot hold NUL: the one character dropped from a stored text.
        sent.setdefault(sid, said.replace("\x00", ""))
    stored = {m.message_sid: m.body for m in messages(app) if m.direction == "in"}
    for sid, body in sent.items():
        assert stored[sid] == body, sid
    for body in stored.values():
        body.encode("utf-8")  # no lone surrogate from repaired bytes
        assert "\x00" not in body


# The test's own reading of Twilio's statuses, later ones higher: a reply's recorded delivery
# must always be one of the highest seen (ties: the last). The phone's word ("delivered",
# "read") outranks a failure; statuses of incoming messages and unknown words change nothing.
RANKS = [
    ("accepted", "scheduled"),
    ("queued",),
    ("sending",),
    ("sent",),
    ("undelivered", "failed", "canceled"),
    ("partially_delivered",),
    ("delivered",),
    ("read",),
]
RANK = {status: rank for rank, group in enumerate(RANKS) for status in group}
NOT_STATUSES = ["received", "receiving", "teleported", "", "delivered\x00", "sent!", "1"]


def status_word(rng: random.Random) -> str:
    """A MessageStatus as Twilio sends it, in odd case or spacing, or no status at all."""
    if rng.random() < 0.1:
        return rng.choice(NOT_STATUSES)
    word = rng.choice(list(RANK))
    return rng.choice([word, word.upper(), f" {word} ", word.title()])


def test_random_status_callbacks_never_fail_or_go_backwards(app: Flask, caplog: Any) -> None:
    """600 callbacks in random order for real, unknown and odd reply ids, signed and forged."""
    rng = random.Random(SEED)
    client = app.test_client()
    token = app.extensions["phischer"].settings.auth_token()
    for i in range(8):
        params = {"MessageSid": f"SM{i:032x}", "From": "+15550100", "Body": "hey how are you"}
        signature = RequestValidator(token).compute_signature(BASE + "/sms", params)
        assert client.post("/sms", data=params, headers={"X-Twilio-Signature": signature}).data
    replies = [m.id for m in messages(app) if m.direction == "out"]
    texts = [m.id for m in messages(app) if m.direction == "in"]
    seen: dict[int, list[str]] = {reply: [] for reply in replies}
    for i in range(600):
        reply = rng.choice([*replies, *replies, rng.choice(texts), 10**9, 0])
        query = rng.choice([f"reply={reply}"] * 8 + ["reply=", "reply=-1", "reply=1e3", "", "x=1"])
        pairs = [("MessageSid", "SM" + "e" * 32), ("MessageStatus", status_word(rng))]
        if rng.random() < 0.2:
            pairs.append(("ErrorCode", rng.choice(["30003", "30034", "", "12\nforged", "9" * 30])))
        if rng.random() < 0.1:
            pairs.append(("SmsStatus", status_word(rng)))
        if rng.random() < 0.1:
            pairs.append(("MessageStatus", status_word(rng)))  # a repeated name
        case = Case(pairs=pairs, query=query)
        if rng.random() < 0.2:
            case.signing = rng.choice(["missing", "wrong_token", "tampered", "other_url", "junk"])
        caplog.clear()
        before = {m.id: (m.delivery, m.error) for m in messages(app)}
        response = post(app, case, "/sms/status")
        where = (i, case)
        assert response.status_code < 500, where
        assert not no_errors_logged(caplog), (no_errors_logged(caplog), where)
        assert_twiml(response)
        after = {m.id: (m.delivery, m.error) for m in messages(app)}
        if case.signing != "signed" or response.status_code != 200:
            assert response.status_code in (400, 403), where
            assert after == before, where
            continue
        form = MultiDict(pairs)
        status = form.get("MessageStatus", form.get("SmsStatus", "")).strip().lower()
        if reply in seen and status in RANK and query == f"reply={reply}":
            seen[reply].append(status)
        for row, (delivery, _) in after.items():
            statuses = seen.get(row, [])
            if not statuses:
                assert delivery is None, (row, where)
                continue
            top = max(RANK[s] for s in statuses)
            assert RANK.get(delivery, -1) == top, (row, delivery, statuses, where)
            # ties: the last of the top rank reported
            assert delivery == [s for s in statuses if RANK[s] == top][-1], (row, statuses)
    assert all(seen.values())  # every reply got callbacks
