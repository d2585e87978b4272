"""The /sms webhook: signatures, storage, idempotency, TwiML, bad requests."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import sqlalchemy as sa

from phischer.models import Contact, Message
from tests.conftest import sign, sms_params, twiml_bodies


def rows(app, model=Message):
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(model).order_by(model.id)))


def test_valid_signature_gets_twiml_reply(app, twilio_post):
    r = twilio_post("what do you do for work")
    assert r.status_code == 200
    assert r.mimetype == "text/xml"
    assert r.replies == ["I compute Bernoulli numbers, mostly by candlelight."]
    inbound, outbound = rows(app)
    assert (inbound.direction, inbound.status, inbound.kind) == ("in", "replied", "chat")
    assert (outbound.direction, outbound.reply_to_id, outbound.model) == (
        "out",
        inbound.id,
        "retrieval",
    )
    assert outbound.latency_ms is not None


def test_forged_signature_is_403_and_nothing_stored(app, twilio_post):
    r = twilio_post("hi", signature="bm90LWEtc2lnbmF0dXJl")
    assert r.status_code == 403
    assert r.data == b"" or twiml_bodies(r.data) == []
    assert rows(app) == []


def test_missing_signature_is_403(app):
    r = app.test_client().post("/sms", data=sms_params("hi"))
    assert r.status_code == 403
    assert rows(app) == []


def test_posts_without_a_signature_are_logged_once_a_minute(app, caplog):
    # A proxy that drops X-Twilio-Signature gave 403s and a silent log; a scanner posting to
    # a public /sms must not fill it either.
    caplog.set_level("DEBUG", logger="phischer.security")
    for _ in range(3):
        assert app.test_client().post("/sms", data=sms_params("hi")).status_code == 403
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "phischer.security"]
    assert [level for level, _ in lines] == ["WARNING", "DEBUG", "DEBUG"]
    assert lines[0][1] == (
        "Rejected a request with no X-Twilio-Signature header: not from Twilio, or a proxy in "
        "front of phischer drops the header (such requests are logged once a minute)"
    )


def test_signature_for_other_token_is_403(app, twilio_post):
    params = sms_params("hi", sid="SMforged")
    forged = sign("some-other-token", "http://localhost/sms", params)
    r = app.test_client().post("/sms", data=params, headers={"X-Twilio-Signature": forged})
    assert r.status_code == 403


def test_tampered_body_is_403(app):
    token = app.extensions["phischer"].settings.auth_token()
    params = sms_params("hi")
    signature = sign(token, "http://localhost/sms", params)
    params["Body"] = "something else"
    r = app.test_client().post("/sms", data=params, headers={"X-Twilio-Signature": signature})
    assert r.status_code == 403


def test_public_url_is_what_gets_signed(make_app, personas, twilio_post):
    proxied = make_app(public_url="https://clone.example.ngrok.app/")
    ok = twilio_post("hey how are you", url="https://clone.example.ngrok.app/sms", target=proxied)
    assert ok.status_code == 200 and ok.replies
    local = twilio_post("hey how are you", url="http://localhost/sms", target=proxied)
    assert local.status_code == 403


def test_public_url_keeps_the_query_string(make_app, personas):
    app = make_app(public_url="https://clone.example.com")
    token = app.extensions["phischer"].settings.auth_token()
    params = sms_params("hi")
    signature = sign(token, "https://clone.example.com/sms?tenant=7", params)
    r = app.test_client().post(
        "/sms?tenant=7", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert r.status_code == 200


def test_forwarded_headers_ignored_without_trust_proxy(app, twilio_post):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "clone.example.com"}
    r = twilio_post("hi", url="https://clone.example.com/sms", headers=forwarded)
    assert r.status_code == 403


def test_forwarded_headers_honoured_with_trust_proxy(make_app, personas, twilio_post):
    app = make_app(trust_proxy=True)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "clone.example.com"}
    r = twilio_post("hi", url="https://clone.example.com/sms", headers=forwarded, target=app)
    assert r.status_code == 200


def test_validation_can_be_switched_off(make_app, personas):
    app = make_app(twilio_validate_signature=False)
    r = app.test_client().post("/sms", data=sms_params("good night"))
    assert r.status_code == 200
    assert twiml_bodies(r.data) == ["Sleep well, dear. Dream of engines."]


def test_tunnel_public_url_file_is_picked_up_without_restart(app, twilio_post):
    settings = app.extensions["phischer"].settings
    assert twilio_post("hi", url="https://t1.ngrok.app/sms").status_code == 403
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    (settings.instance_path / "public_url").write_text("https://t1.ngrok.app\n")
    assert twilio_post("hi", url="https://t1.ngrok.app/sms").status_code == 200


def test_a_new_tunnel_url_is_used_at_once(app, twilio_post):
    # The URL file is looked at once a second; a signature that fails against the cached
    # URL makes the server look again, so a restarted tunnel never costs a 403.
    instance = app.extensions["phischer"].settings.instance_path
    instance.mkdir(parents=True, exist_ok=True)
    (instance / "public_url").write_text("https://t1.ngrok.app\n")
    assert twilio_post("hi", url="https://t1.ngrok.app/sms").status_code == 200
    (instance / "public_url").write_text("https://t2.ngrok.app\n")
    assert twilio_post("hi", url="https://t2.ngrok.app/sms").status_code == 200
    assert twilio_post("hi", url="https://t1.ngrok.app/sms").status_code == 403


def test_missing_from_or_sid_is_400(app):
    token = app.extensions["phischer"].settings.auth_token()
    for missing in ("From", "MessageSid"):
        params = sms_params("hi")
        del params[missing]
        signature = sign(token, "http://localhost/sms", params)
        r = app.test_client().post("/sms", data=params, headers={"X-Twilio-Signature": signature})
        assert r.status_code == 400
        assert r.mimetype == "text/xml"
    assert rows(app) == []


def test_same_message_sid_twice_one_row_one_model_call(make_app, personas, fake_openai, database):
    from tests.conftest import set_model

    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app()
    token = app.extensions["phischer"].settings.auth_token()
    params = sms_params("hello there", sid="SMdup0001")
    headers = {"X-Twilio-Signature": sign(token, "http://localhost/sms", params)}
    first = app.test_client().post("/sms", data=params, headers=headers)
    second = app.test_client().post("/sms", data=params, headers=headers)
    assert twiml_bodies(first.data) == ["echo: hello there"]
    assert twiml_bodies(second.data) == ["echo: hello there"]
    assert len(fake_openai.chat_calls) == 1
    stored = [m for m in rows(app) if m.direction == "in"]
    assert len(stored) == 1


def test_retry_while_first_is_in_flight_gets_empty_twiml(app, twilio_post):
    # Simulate the first delivery still being processed: inbound stored, no reply yet.
    from phischer.inbound import Inbound

    service = app.extensions["phischer"].sms
    with app.extensions["phischer"].db.write() as session:
        contact = Contact(phone="+15550100")
        session.add(contact)
        session.flush()
        session.add(
            Message(
                contact_id=contact.id,
                direction="in",
                body="hi",
                message_sid="SMinflight",
                status="processing",
            )
        )
    assert service.handle(Inbound(phone="+15550100", sid="SMinflight", body="hi")).answers == []
    r = twilio_post("hi", sid="SMinflight")
    assert r.status_code == 200 and r.replies == []
    assert r.headers["X-Phischer-No-Reply"] == "retry"


def test_unicode_and_emoji_round_trip(app, twilio_post):
    r = twilio_post("héllo 👋 how are you ☕")
    assert r.replies == ["Splendid, thank you! Knitting a scarf for the cat."]
    inbound = rows(app)[0]
    assert inbound.body == "héllo 👋 how are you ☕"


def test_mms_without_body_gets_text_only_reply_and_no_model_call(
    make_app, personas, fake_openai, database, twilio_post
):
    from tests.conftest import set_model

    with database.write() as session:
        set_model(session, "Ada", "m", base_url=fake_openai.base_url)
    app = make_app()
    r = twilio_post(
        "",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/x.jpg",
        MediaContentType0="image/jpeg",
        target=app,
    )
    assert r.replies == ["I can only read text messages for now."]
    assert fake_openai.chat_calls == []
    inbound = rows(app)[0]
    assert (inbound.kind, inbound.num_media) == ("media", 1)


def test_mms_with_caption_is_answered(app, twilio_post):
    r = twilio_post("good night", NumMedia="1", MediaUrl0="https://api.twilio.com/x.jpg")
    assert r.replies == ["Sleep well, dear. Dream of engines."]


# WhatsApp's extra fields, as Twilio posts them for a WhatsApp sender.
WHATSAPP = {"ProfileName": "Al", "WaId": "15550102", "To": "whatsapp:+15550199"}


def test_a_whatsapp_text_is_answered_like_an_sms(app, twilio_post):
    r = twilio_post("good night", from_="whatsapp:+15550102", MessageType="text", **WHATSAPP)
    assert r.replies == ["Sleep well, dear. Dream of engines."]
    assert rows(app, Contact)[0].phone == "whatsapp:+15550102"


def test_a_shared_location_gets_the_text_only_reply(app, twilio_post):
    """A WhatsApp location has no Body, only coordinates: not silence, and no model call."""
    r = twilio_post(
        "",
        from_="whatsapp:+15550102",
        MessageType="location",
        Latitude="51.5072",
        Longitude="-0.1276",
        Address="London",
        Label="Home",
        **WHATSAPP,
    )
    assert r.replies == ["I can only read text messages for now."]
    inbound = rows(app)[0]
    assert (inbound.kind, inbound.status, inbound.body) == ("media", "replied", "")


def test_a_location_with_words_is_answered(app, twilio_post):
    r = twilio_post("good night", Latitude="51.5", Longitude="-0.1", **WHATSAPP)
    assert r.replies == ["Sleep well, dear. Dream of engines."]


def test_a_tapped_button_is_its_label(app, twilio_post):
    """A quick-reply button posts its label as ButtonText: what the texter said."""
    r = twilio_post(
        "", ButtonText="what do you do for work", ButtonPayload="job", MessageType="button"
    )
    assert r.replies == ["I compute Bernoulli numbers, mostly by candlelight."]
    assert rows(app)[0].body == "what do you do for work"
    # with a Body too, the Body is the text
    again = twilio_post("good night", ButtonText="what do you do for work", ButtonPayload="job")
    assert again.replies == ["Sleep well, dear. Dream of engines."]


def test_a_button_labelled_stop_opts_out(app, twilio_post):
    assert twilio_post("", ButtonText="Stop", ButtonPayload="unsubscribe").replies == []
    assert twilio_post("good night").replies == []


@pytest.mark.parametrize("count", ["", "lots", "0"])
def test_media_without_a_usable_num_media_is_still_media(app, twilio_post, count):
    r = twilio_post("", NumMedia=count, MediaUrl0="https://api.twilio.com/x.jpg")
    assert r.replies == ["I can only read text messages for now."]


def test_empty_text_without_media_gets_no_reply(app, twilio_post):
    r = twilio_post("   ")
    assert r.status_code == 200 and r.replies == []


def test_bad_requests_never_5xx(app, twilio_post):
    client = app.test_client()
    assert client.get("/sms").status_code == 405
    assert client.post("/sms", data="not a form", content_type="text/plain").status_code == 403
    assert (
        client.post(
            "/sms", data=b"\xff\xfe" * 10, content_type="application/x-www-form-urlencoded"
        ).status_code
        == 403
    )
    big = client.post("/sms", data={"Body": "x" * 100_000}, headers={"X-Twilio-Signature": "x"})
    assert big.status_code == 413
    weird = twilio_post("hi", NumMedia="lots")
    assert weird.status_code == 200
    nul = twilio_post("nul \x00 byte and \ud7ff")
    assert nul.status_code == 200
    assert rows(app)[-2].body == "nul  byte and \ud7ff"  # NUL dropped: PostgreSQL refuses it
    before = len(rows(app))
    for bad in ({"from_": "+1" + "5" * 40}, {"sid": "SM" + "0" * 70}, {"from_": "+1555\x000100"}):
        assert twilio_post("hi", **bad).status_code == 400
    assert len(rows(app)) == before


def test_healthz(app):
    r = app.test_client().get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_healthz_reports_a_broken_database(app):
    app.extensions["phischer"].db.engine.dispose()
    db_path = app.extensions["phischer"].settings.instance_path / "phischer.db"
    db_path.unlink()
    db_path.mkdir()  # a directory where the database file was: SQLite cannot open it
    r = app.test_client().get("/healthz")
    assert r.status_code == 503
    assert (r.mimetype, r.get_json()) == ("application/json", {"status": "error"})


def test_logs_above_debug_hold_no_numbers_or_tokens(
    make_app, personas, database, fake_openai, twilio_post, caplog
):
    import logging

    from tests.conftest import set_model

    with database.write() as session:
        set_model(session, "Bo", "m", base_url=fake_openai.base_url)
    app = make_app(model_retries=0)
    token = app.extensions["phischer"].settings.auth_token()
    fake_openai.behaviour, fake_openai.status_code = "status", 500
    with caplog.at_level(logging.INFO):
        twilio_post("STOP", from_="+15557654321", target=app)
        twilio_post("#bo hi", from_="+15557654322", target=app)
        twilio_post("hi", from_="+15557654323", signature="forged", target=app)
    text = caplog.text
    assert "Persona Bo failed to answer" in text  # the failure itself is logged
    assert "765432" not in text
    assert token not in text and "sk-test-not-real" not in text


def test_non_ascii_signature_is_403_not_an_error(app, caplog):
    for signature in ("é", "Ã©bm90", "\u00ff" * 28):
        r = app.test_client().post(
            "/sms", data=sms_params("hi"), headers={"X-Twilio-Signature": signature}
        )
        assert r.status_code == 403
    assert rows(app) == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_rejected_signature_log_leaves_out_url_credentials(make_app, personas, caplog):
    app = make_app(public_url="https://clone:s3cret@sms.example.com")
    r = app.test_client().post(
        "/sms", data=sms_params("hi"), headers={"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"}
    )
    assert r.status_code == 403
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "https://sms.example.com/sms" in logged and "s3cret" not in logged


def test_switching_validation_off_warns_loudly_at_creation(make_app, personas, caplog):
    import logging

    warning = (
        "TWILIO_VALIDATE_SIGNATURE=false: anyone who finds this URL can text as any number. "
        "Use only for local experiments."
    )
    with caplog.at_level(logging.WARNING, logger="phischer"):
        make_app()
    assert warning not in caplog.messages  # only said when checking is really off
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phischer"):
        app = make_app(twilio_validate_signature=False)
    said = [r for r in caplog.records if r.getMessage() == warning]
    assert [(r.name, r.levelname) for r in said] == [("phischer", "WARNING")]
    r = app.test_client().post("/sms", data=sms_params("tell me a joke"))  # no signature
    assert r.status_code == 200
    assert twiml_bodies(r.data) == ["Why did the loom blush? It saw the punch cards."]


def test_public_url_wins_over_forwarded_headers_with_trust_proxy(make_app, personas, twilio_post):
    app = make_app(public_url="https://clone.example.com", trust_proxy=True)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "other.example.net"}
    ok = twilio_post(
        "good night", url="https://clone.example.com/sms", headers=forwarded, target=app
    )
    assert ok.status_code == 200
    assert ok.replies == ["Sleep well, dear. Dream of engines."]
    spoofed = twilio_post("hi", url="https://other.example.net/sms", headers=forwarded, target=app)
    assert spoofed.status_code == 403
    assert [m.body for m in rows(app)] == ["good night", "Sleep well, dear. Dream of engines."]


def text_lines(caplog) -> list[str]:
    """The per-text INFO lines the SMS service logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "phischer.inbound" and r.getMessage().startswith("text from ")
    ]


def test_each_text_is_one_info_line_with_the_number_masked(app, twilio_post, caplog):
    texts = [
        ("good night", "persona 'Ada' (retrieval) replied"),
        ("#bo", "switched to persona 'Bo'"),
        ("#nobody-here", "unknown #keyword"),
        ("#reset", "#reset"),
        ("   ", "ignored (empty)"),
        ("STOP", "opt-out recorded"),
        ("hello?", "ignored (the number opted out)"),
        ("START", "opt-in recorded"),
    ]
    with caplog.at_level("INFO", logger="phischer"):
        for body, _ in texts:
            twilio_post(body, from_="+15550100114")
        twilio_post("good night", from_="+15550100114", sid="SMsame")
        twilio_post("good night", from_="+15550100114", sid="SMsame")  # Twilio's retry
    lines = text_lines(caplog)
    expected = [outcome for _, outcome in texts] + [
        "persona 'Bo' (retrieval) replied",
        "Twilio's retry of a stored text, answered as before",
    ]
    assert len(lines) == len(expected)
    for line, outcome in zip(lines, expected, strict=True):
        assert re.fullmatch(rf"text from …14 → {re.escape(outcome)} in \d+ ms", line), line
    # Phone numbers are personal data, and message bodies too: neither is in any INFO line.
    assert "0100114" not in caplog.text
    assert "nobody-here" not in caplog.text


def test_refused_and_limited_texts_get_their_line_too(make_app, personas, twilio_post, caplog):
    app = make_app(allowed_numbers=frozenset({"+15550100114"}), daily_limit=1)
    with caplog.at_level("INFO", logger="phischer"):
        twilio_post("good night", from_="+15550100999", target=app)
        twilio_post("good night", from_="+15550100114", target=app)
        twilio_post("good night", from_="+15550100114", target=app)
    assert [line.split(" in ")[0] for line in text_lines(caplog)] == [
        "text from …99 → refused (not on ALLOWED_NUMBERS)",
        "text from …14 → persona 'Ada' (retrieval) replied",
        "text from …14 → over DAILY_LIMIT",
    ]


def test_a_json_body_must_match_the_bodysha256_it_was_signed_with(app):
    # Twilio signs a JSON post as its URL with ?bodySHA256=…; the body itself was not checked.
    token = app.extensions["phischer"].settings.auth_token()
    body = json.dumps({"MessageSid": "SM1", "MessageStatus": "delivered"})
    path = f"/sms/status?reply=1&bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    signature = sign(token, "http://localhost" + path, {})
    for sent, status in [(body, 200), (body.replace("delivered", "failed"), 403)]:
        r = app.test_client().post(
            path,
            data=sent,
            headers={"Content-Type": "application/json", "X-Twilio-Signature": signature},
        )
        assert r.status_code == status
