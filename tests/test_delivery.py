"""Status callbacks: each reply asks Twilio where it went, and the answer lands on its row."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
import sqlalchemy as sa

from phischer.models import Contact, Message
from tests.conftest import set_model, sign

STATUS_URL = "http://localhost/sms/status"


def rows(app) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def actions(data: bytes) -> list[str | None]:
    return [m.get("action") for m in ElementTree.fromstring(data).iter("Message")]


def callback(
    app,
    reply_id: int | str,
    status: str,
    code: str = "",
    *,
    signature=None,
    base=STATUS_URL,
    sid="SM" + "f" * 32,
):
    """POST a status callback as Twilio does for the reply's <Message action>."""
    params = {
        "MessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "MessageStatus": status,
        "To": "+15550100",
        "From": "+15550199",
    }
    if code:
        params["ErrorCode"] = code
    url = f"{base}?reply={reply_id}"
    token = app.extensions["phischer"].settings.auth_token()
    headers = {"X-Twilio-Signature": signature or sign(token, url, params)}
    return app.test_client().post(f"/sms/status?reply={reply_id}", data=params, headers=headers)


def test_each_reply_asks_for_its_own_status_callback(app, twilio_post):
    first = twilio_post("hey how are you")
    second = twilio_post("#list")
    out = [m for m in rows(app) if m.direction == "out"]
    assert actions(first.data) == [f"sms/status?reply={out[0].id}"]
    assert actions(second.data) == [f"sms/status?reply={out[1].id}"]
    # the text Twilio sends is unchanged
    assert first.replies == ["Splendid, thank you! Knitting a scarf for the cat."]


def test_a_retried_text_gets_the_same_reply_and_callback(app, twilio_post):
    first = twilio_post("hey how are you", sid="SMsame")
    again = twilio_post("hey how are you", sid="SMsame")
    assert actions(again.data) == actions(first.data) != []
    assert again.replies == first.replies


def test_delivery_is_recorded_and_never_goes_backwards(app, twilio_post):
    twilio_post("hey how are you")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    assert reply.delivery is None
    for status in ("sent", "delivered", "sent"):  # the late "sent" arrives out of order
        response = callback(app, reply.id, status)
        assert response.status_code == 200
        assert response.mimetype == "text/xml"
    reply = [m for m in rows(app) if m.direction == "out"][0]
    assert (reply.status, reply.delivery, reply.error) == ("replied", "delivered", None)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (
            "undelivered",
            "30034",
            "Twilio 30034 (undelivered): the number is not registered for US A2P 10DLC: "
            "register it in the Twilio console",
        ),
        (
            "failed",
            "30005",
            "Twilio 30005 (failed): the number does not exist or is no longer in service",
        ),
        (
            "failed",
            "63016",
            "Twilio 63016 (failed): WhatsApp allows a free-form reply only within 24 hours of "
            "the texter's last message",
        ),
        ("undelivered", "39999", "Twilio 39999 (undelivered)"),
        ("failed", "", "Twilio: failed"),
        ("failed", "12\nforged log line", "Twilio: failed"),
    ],
)
def test_an_undelivered_reply_records_why(app, twilio_post, status, code, error):
    twilio_post("hey how are you")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    callback(app, reply.id, "sent")
    callback(app, reply.id, status, code)
    reply = [m for m in rows(app) if m.direction == "out"][0]
    assert (reply.delivery, reply.error) == (status, error)


def test_a_reply_refused_as_opted_out_opts_the_number_out(app, twilio_post):
    # The number texted STOP that phischer never saw (the server was down): Twilio refuses
    # every reply (21610), so the clone stops answering, and START opts back in as usual.
    twilio_post("hey how are you")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    callback(app, reply.id, "failed", "21610")
    with app.extensions["phischer"].db.read() as session:
        assert session.scalar(sa.select(Contact.opted_out)) is True
    assert twilio_post("what do you do for work").replies == []
    assert rows(app)[-1].status == "ignored"
    assert twilio_post("START").replies == [
        "You're back in. Text HELP for commands, STOP to opt out."
    ]
    assert twilio_post("what do you do for work").replies != []


def test_other_failures_or_a_text_since_leave_the_number_opted_in(app, twilio_post):
    twilio_post("hey how are you")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    callback(app, reply.id, "undelivered", "30003")
    assert twilio_post("what do you do for work").replies != []
    # A late report on a reply sent before STOP and START: the START is the newer word.
    twilio_post("STOP")
    twilio_post("START")
    callback(app, reply.id, "failed", "21610")
    assert twilio_post("what do you do for work").replies != []


def test_forged_callbacks_are_refused_and_change_nothing(app, twilio_post):
    twilio_post("hey how are you")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    assert callback(app, reply.id, "failed", "30005", signature="forged").status_code == 403
    assert [m for m in rows(app) if m.direction == "out"][0].delivery is None


@pytest.mark.parametrize("reply", ["", "abc", "-1", "1" * 19, "1e3"])
def test_a_callback_without_a_usable_reply_id_is_a_400(app, reply):
    assert callback(app, reply, "delivered").status_code == 400


def test_callbacks_for_no_such_reply_or_unknown_statuses_change_nothing(app, twilio_post):
    twilio_post("hey how are you")
    inbound, reply = rows(app)
    assert callback(app, 999_999, "delivered").status_code == 200
    assert callback(app, inbound.id, "delivered").status_code == 200  # a text, not a reply
    assert callback(app, reply.id, "teleported").status_code == 200
    assert [m.delivery for m in rows(app)] == [None, None]


@pytest.fixture
def slow_app(make_app, personas, database, fake_openai, twilio_rest):
    """Ada on the (fake) OpenAI backend, always answering by REST."""
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)

    def build(**overrides):
        return make_app(reply_mode="async", **twilio_rest, **overrides)

    return build


def test_a_rest_reply_asks_for_callbacks_at_the_public_url(slow_app, fake_twilio, twilio_post):
    app = slow_app(public_url="https://clone.example.com")
    response = twilio_post("hey how are you", url="https://clone.example.com/sms", target=app)
    assert response.replies == []
    app.extensions["phischer"].sms.shutdown()  # wait for the REST send
    (send,) = fake_twilio.calls("POST", "/Messages.json")
    reply = [m for m in rows(app) if m.direction == "out"][0]
    assert reply.status == "sent"
    assert send.form["StatusCallback"] == f"https://clone.example.com/sms/status?reply={reply.id}"
    # and the callback Twilio then makes is taken like a TwiML reply's
    params = {"MessageSid": reply.message_sid, "MessageStatus": "delivered"}
    token = app.extensions["phischer"].settings.auth_token()
    signature = sign(token, send.form["StatusCallback"], params)
    posted = app.test_client().post(
        f"/sms/status?reply={reply.id}", data=params, headers={"X-Twilio-Signature": signature}
    )
    assert posted.status_code == 200
    assert [m.delivery for m in rows(app) if m.direction == "out"] == ["delivered"]


def test_a_slow_reply_to_a_whatsapp_texter_goes_out_on_whatsapp(slow_app, fake_twilio, twilio_post):
    app = slow_app()
    assert twilio_post("hey how are you", from_="whatsapp:+15550102", target=app).replies == []
    app.extensions["phischer"].sms.shutdown()  # wait for the REST send
    (send,) = fake_twilio.calls("POST", "/Messages.json")
    assert (send.form["To"], send.form["From"]) == ("whatsapp:+15550102", "whatsapp:+15550199")
    assert [(m.status, m.error) for m in rows(app) if m.direction == "out"] == [("sent", None)]


def test_without_a_public_url_a_rest_reply_asks_for_no_callback(slow_app, fake_twilio, twilio_post):
    app = slow_app()
    twilio_post("hey how are you", target=app)
    app.extensions["phischer"].sms.shutdown()
    (send,) = fake_twilio.calls("POST", "/Messages.json")
    assert "StatusCallback" not in send.form


def test_a_failure_reported_before_the_send_returns_is_kept(slow_app, fake_twilio, twilio_post):
    """Twilio can call back "failed" before its answer to the send reaches phischer."""
    app = slow_app(public_url="https://clone.example.com")

    def fail_at_once() -> None:
        (reply,) = [m for m in rows(app) if m.direction == "out"]
        assert (
            callback(
                app, reply.id, "failed", "30005", base="https://clone.example.com/sms/status"
            ).status_code
            == 200
        )

    fake_twilio.after_next("POST", "/Messages.json", fail_at_once)
    twilio_post("hey how are you", url="https://clone.example.com/sms", target=app)
    app.extensions["phischer"].sms.shutdown()
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    assert (reply.status, reply.delivery) == ("sent", "failed")
    assert reply.message_sid.startswith("SM")
    assert reply.error == (
        "Twilio 30005 (failed): the number does not exist or is no longer in service"
    )


@pytest.mark.parametrize(
    ("status", "kept"),
    [
        ("undelivered", False),
        ("failed", False),
        ("canceled", False),
        ("delivered", True),
        ("partially_delivered", True),
    ],
)
def test_a_reply_the_phone_never_got_is_left_out_of_the_thread(
    make_app, personas, database, fake_openai, twilio_post, status, kept
):
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app()
    twilio_post("hi", target=app)
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    callback(app, reply.id, status, "" if kept else "30003")
    twilio_post("you there?", target=app)
    if kept:
        assert fake_openai.chat_calls[-1]["messages"][1:] == [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "echo: hi"},
            {"role": "user", "content": "you there?"},
        ]
    else:  # the person never read "echo: hi", so the thread is their two texts
        assert fake_openai.chat_calls[-1]["messages"][1:] == [
            {"role": "user", "content": "hi\nyou there?"},
        ]


def test_a_later_delivered_clears_the_failure(app, twilio_post):
    twilio_post("hey how are you")
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    callback(app, reply.id, "undelivered", "30003")
    callback(app, reply.id, "delivered")
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    assert (reply.delivery, reply.error) == ("delivered", None)


@pytest.mark.parametrize(
    ("sequence", "delivery", "error"),
    [
        # the phone's receipt outranks a failure reported after it (late or contradictory)
        (["delivered", "undelivered"], "delivered", None),
        (["read", "failed", "delivered", "sent"], "read", None),
        (["undelivered", "read"], "read", None),
        # a scheduled send called off never reached the phone
        (["sent", "canceled"], "canceled", "Twilio: canceled"),
        (["canceled", "queued"], "canceled", "Twilio: canceled"),
        # part of it arrived: more than a failure, less than the whole
        (["undelivered", "partially_delivered", "sent"], "partially_delivered", None),
        (["partially_delivered", "failed", "delivered"], "delivered", None),
        # statuses of incoming messages, and Twilio's words in any case
        (["received", "receiving", " SENT "], "sent", None),
    ],
)
def test_every_twilio_status_is_ordered(app, twilio_post, sequence, delivery, error):
    twilio_post("hey how are you")
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    for status in sequence:
        assert callback(app, reply.id, status).status_code == 200
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    assert (reply.delivery, reply.error) == (delivery, error)


@pytest.mark.parametrize("callback_first", [False, True])
def test_a_send_whose_answer_was_lost_is_sent_once_twilio_reports_on_it(
    slow_app, fake_twilio, fake_openai, twilio_post, callback_first
):
    """Twilio took the reply, but the connection dropped before its answer: its callbacks,
    before or after phischer records the doubtful send, show the reply went out."""
    app = slow_app(public_url="https://clone.example.com")

    def report(status: str) -> None:
        (reply,) = [m for m in rows(app) if m.direction == "out"]
        base = "https://clone.example.com/sms/status"
        sid = fake_twilio.messages[0]["sid"]
        assert callback(app, reply.id, status, base=base, sid=sid).status_code == 200

    fake_twilio.hang_up_next(
        "POST", "/Messages.json", then=(lambda: report("delivered")) if callback_first else None
    )
    twilio_post("hi", url="https://clone.example.com/sms", target=app)
    app.extensions["phischer"].sms.shutdown()  # wait for the REST send
    if not callback_first:
        report("delivered")
    assert len(fake_twilio.messages) == 1
    (reply,) = [m for m in rows(app) if m.direction == "out"]
    assert (reply.status, reply.delivery, reply.error) == ("sent", "delivered", None)
    # The callback's sid is kept: the answer that would have brought it was lost.
    assert reply.message_sid == fake_twilio.messages[0]["sid"]
    # the person read it, so the model sees it said (the next text, to a fresh server)
    again = slow_app(public_url="https://clone.example.com")
    twilio_post("you there?", url="https://clone.example.com/sms", target=again)
    again.extensions["phischer"].sms.shutdown()
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "echo: hi"},
        {"role": "user", "content": "you there?"},
    ]
