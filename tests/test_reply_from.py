"""A REST reply goes out from the number or sender the person texted, as a TwiML reply does."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from alembic import command

from phischer.migrate import alembic_config
from phischer.models import utcnow
from phischer.recovery import RECOVER_AFTER, sweep
from tests.conftest import persona_row
from tests.test_delivery import rows, slow_app  # noqa: F401 (a fixture)
from tests.test_recovery import interrupted

OURS = "+15550199"  # TWILIO_PHONE_NUMBER in the twilio_rest settings
OTHER = "+15550288"  # a second number of the account, pointed at the same webhook
SANDBOX = "whatsapp:+14155238886"  # Twilio's WhatsApp sandbox: Twilio's number, not ours


def sent_pairs(fake_twilio) -> set[tuple[str, str]]:
    """(To, From) of every REST send."""
    return {(c.form["To"], c.form["From"]) for c in fake_twilio.calls("POST", "/Messages.json")}


def texted(app, twilio_post, *posts: tuple[str, str | None]) -> None:
    """Post a text from each (From, To) pair and wait for the REST replies."""
    for phone, to in posts:
        assert twilio_post("hey how are you", from_=phone, To=to, target=app).replies == []
    app.extensions["phischer"].sms.shutdown()  # wait for the REST sends


def test_two_numbers_on_one_webhook_each_reply_from_themselves(
    slow_app,  # noqa: F811
    fake_twilio,
    twilio_post,
    caplog,
):
    caplog.set_level(logging.DEBUG)
    app = slow_app()
    texted(app, twilio_post, ("+15550100", OURS), ("+15550101", OTHER))
    assert sent_pairs(fake_twilio) == {("+15550100", OURS), ("+15550101", OTHER)}
    # Our numbers are phone numbers too: whole only in DEBUG lines, if anywhere.
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG and "0288" in r.message]
    by_phone = {}
    for message in rows(app):
        by_phone.setdefault(message.contact_id, []).append(
            (message.direction, message.status, message.our_address)
        )
    assert sorted(by_phone.values()) == [
        [("in", "replied", OURS), ("out", "sent", OURS)],
        [("in", "replied", OTHER), ("out", "sent", OTHER)],
    ]


def test_the_whatsapp_sandbox_is_answered_from_the_sandbox(
    slow_app,  # noqa: F811
    fake_twilio,
    twilio_post,
):
    app = slow_app()
    texted(app, twilio_post, ("whatsapp:+15550102", SANDBOX))
    assert sent_pairs(fake_twilio) == {("whatsapp:+15550102", SANDBOX)}


@pytest.mark.parametrize(
    ("phone", "to"),
    [
        ("rcs:+15550100", "rcs:acme_0a1b2c3d_agent"),
        ("messenger:2345678901234567", "messenger:1234567890123456"),
        ("+15550100", "12345"),  # a short code
    ],
)
def test_other_senders_are_answered_from_themselves(
    slow_app,  # noqa: F811
    fake_twilio,
    twilio_post,
    phone,
    to,
):
    app = slow_app()
    texted(app, twilio_post, (phone, to))
    assert sent_pairs(fake_twilio) == {(phone, to)}


@pytest.mark.parametrize(
    ("phone", "to", "default"),
    [
        ("+15550100", None, OURS),  # no To at all
        ("+15550100", "  ", OURS),
        ("whatsapp:+15550102", None, "whatsapp:" + OURS),  # on the texter's channel
        # another channel than the texter's (Twilio would refuse the pair: 21910)
        ("+15550100", "whatsapp:" + OTHER, OURS),
        ("whatsapp:+15550102", OTHER, "whatsapp:" + OURS),
        ("+15550100", "+1555 0288", OURS),  # not an address
        ("+15550100", "+1" + "5" * 70, OURS),  # longer than the column
        ("+15550100", OTHER + "\x00", OURS),
    ],
)
def test_without_a_usable_to_a_rest_reply_comes_from_twilio_phone_number(
    slow_app,  # noqa: F811
    fake_twilio,
    twilio_post,
    phone,
    to,
    default,
):
    app = slow_app()
    texted(app, twilio_post, (phone, to))
    assert sent_pairs(fake_twilio) == {(phone, default)}
    assert [(m.status, m.our_address) for m in rows(app)] == [("replied", None), ("sent", None)]


def test_a_reply_twilio_could_not_take_is_retried_from_the_number_texted(
    slow_app,  # noqa: F811
    fake_twilio,
    twilio_post,
):
    app = slow_app()
    service = app.extensions["phischer"].sms
    service.sender.retry_delays_s = ()
    fake_twilio.fail_messages(503, 20503, "Service unavailable")
    texted(app, twilio_post, ("+15550101", OTHER))
    assert [m.status for m in rows(app)] == ["replied", "send_retry"]
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 1
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [c.form["From"] for c in sends] == [OTHER, OTHER]
    assert [m.status for m in rows(app)] == ["replied", "sent"]


def test_the_sweep_answers_from_the_number_texted_and_rows_from_before_0008_from_ours(
    settings, database, make_app, personas, fake_twilio, twilio_rest
):
    ada = persona_row(database).id
    at = (utcnow() - dt.timedelta(minutes=5)).isoformat(sep=" ", timespec="microseconds")
    # Rows as revision 0007 stored them (no our_address): a text left "processing" and a
    # reply to another text that Twilio could not take yet.
    command.downgrade(alembic_config(settings.database_url), "0007")
    with database.engine.begin() as conn:
        for phone in ("+15550100", "whatsapp:+15550102"):
            conn.exec_driver_sql(
                "INSERT INTO contacts (phone, persona_id, opted_out, replies_today, created_at) "
                "VALUES (?, ?, 0, 1, ?)",
                (phone, ada, at),
            )
        message = (
            "INSERT INTO messages (contact_id, persona_id, direction, kind, body, status, "
            "reply_to_id, num_media, created_at) VALUES (?, ?, ?, 'chat', ?, ?, ?, 0, ?)"
        )
        conn.exec_driver_sql(message, (1, ada, "in", "what do you do for work", "processing", None, at))  # fmt: skip
        conn.exec_driver_sql(message, (2, ada, "in", "hi", "replied", None, at))
        conn.exec_driver_sql(message, (2, ada, "out", "later", "send_retry", 3, at))
    app = make_app(**twilio_rest)  # upgraded to head
    interrupted(app, "good night", "SMnew", dt.timedelta(minutes=5), "+15550101", to=OTHER)
    result = sweep(app.extensions["phischer"].sms)
    assert (result.answered, result.resent, result.failed) == (2, 1, 0)
    assert sent_pairs(fake_twilio) == {
        ("+15550100", OURS),
        ("whatsapp:+15550102", "whatsapp:" + OURS),
        ("+15550101", OTHER),
    }
