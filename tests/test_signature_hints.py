"""A refused Twilio signature is logged with its likely cause, and is still refused."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from phischer.models import Message
from tests.conftest import sign, sms_params

PREFIX = "Rejected a request with a bad Twilio signature for "


def refused(app, url: str, caplog, headers=None, token=None) -> str:
    """POST a text signed for `url`; assert the 403 and that nothing is stored; the log line."""
    settings = app.extensions["phischer"].settings
    params = sms_params("hi", "+15551234567")
    signature = sign(token or settings.auth_token(), url, params)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="phischer"):
        r = app.test_client().post(
            "/sms", data=params, headers={"X-Twilio-Signature": signature, **(headers or {})}
        )
    assert r.status_code == 403
    with app.extensions["phischer"].db.read() as session:
        assert list(session.scalars(sa.select(Message))) == []
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(PREFIX)]
    assert "1234567" not in line and settings.auth_token() not in line
    return line


def write_tunnel_url(app, url: str) -> None:
    instance = app.extensions["phischer"].settings.instance_path
    instance.mkdir(parents=True, exist_ok=True)
    (instance / "public_url").write_text(url + "\n")


def test_a_public_url_that_hides_the_tunnels_says_to_remove_it(make_app, personas, caplog):
    app = make_app(public_url="https://old.example.com")
    write_tunnel_url(app, "https://abc.ngrok-free.app")
    line = refused(app, "https://abc.ngrok-free.app/sms", caplog)
    assert line == (
        PREFIX + "https://old.example.com/sms: it fits https://abc.ngrok-free.app/sms, the URL "
        "`phischer up`/`tunnel` wrote to instance/public_url, but PUBLIC_URL="
        "https://old.example.com (environment or .env) wins over that file: remove PUBLIC_URL, "
        "or set it to https://abc.ngrok-free.app"
    )


def test_a_public_url_and_another_tunnel_url_are_both_named(make_app, personas, caplog):
    # The signature fits neither: both URLs are said, and the token is the other suspect.
    app = make_app(public_url="https://old.example.com")
    write_tunnel_url(app, "https://abc.ngrok-free.app")
    line = refused(app, "https://elsewhere.example.net/sms", caplog)
    assert "checked for PUBLIC_URL=https://old.example.com" in line
    assert "instance/public_url (written by `phischer up`/`tunnel`) holds " in line
    assert "https://abc.ngrok-free.app: PUBLIC_URL wins" in line


def test_the_host_a_text_was_sent_to_names_the_url_twilio_signed(make_app, personas, caplog):
    app = make_app(public_url="https://old.example.com")
    line = refused(app, "https://new.example.com/sms", caplog, {"Host": "new.example.com"})
    assert line == (
        PREFIX + "https://old.example.com/sms: it fits https://new.example.com/sms, the host "
        "this request was sent to (Host): Twilio signs the SMS URL set on the number, so set "
        "PUBLIC_URL=https://new.example.com"
    )


def test_another_host_is_named_even_when_nothing_fits(make_app, personas, caplog):
    app = make_app(public_url="https://old.example.com")
    line = refused(app, "https://x.example.com/sms", caplog, {"Host": "new.example.com"})
    assert (
        "it was checked for https://old.example.com/sms, but sent to host new.example.com "
        "(Host): Twilio signs the SMS URL set on the number" in line
    )


@pytest.mark.parametrize(
    ("headers", "signed"),
    [
        ({"X-Forwarded-Proto": "https"}, "https://localhost/sms"),
        (
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sms.example.com"},
            "https://sms.example.com/sms",
        ),
    ],
)
def test_forwarded_headers_without_trust_proxy_say_to_set_it(app, caplog, headers, signed):
    line = refused(app, signed, caplog, headers)
    base = signed.removesuffix("/sms")
    assert line.startswith(PREFIX + f"http://localhost/sms: it fits {signed}")
    assert f"set PUBLIC_URL={base} or TRUST_PROXY=true (only behind a proxy you run)" in line


def test_forwarded_headers_that_fit_nothing_still_say_trust_proxy(app, caplog):
    line = refused(app, "https://x.example.net/sms", caplog, {"X-Forwarded-Proto": "https"})
    assert (
        "X-Forwarded-Proto is ignored while TRUST_PROXY is off: set TRUST_PROXY=true (only "
        "behind a proxy you run) or PUBLIC_URL" in line
    )


@pytest.mark.parametrize(
    "signed", ["http://clone.example.com/sms", "http://clone.example.com:80/sms"]
)
def test_the_other_scheme_or_port_is_named_but_refused(make_app, personas, caplog, signed):
    app = make_app(public_url="https://clone.example.com")
    line = refused(app, signed, caplog)
    assert line == (
        PREFIX + f"https://clone.example.com/sms: it fits {signed} (another scheme or port): "
        "Twilio signs the SMS URL exactly as it is set on the number, so set PUBLIC_URL="
        f"{signed.removesuffix('/sms')}, or set the number's SMS URL to "
        "https://clone.example.com/sms"
    )


def test_a_signature_no_url_fits_suspects_the_token(make_app, personas, caplog):
    app = make_app(public_url="https://clone.example.com", twilio_auth_token="f" * 32)
    other = "0123456789abcdef0123456789abcdef"
    line = refused(app, "https://clone.example.com/sms", caplog, {"Host": "localhost"}, other)
    assert line == (
        PREFIX + "https://clone.example.com/sms: the signature fits no other scheme, port or "
        "host for it, so if that is the number's SMS URL, TWILIO_AUTH_TOKEN may be another "
        "account's, or a rotated or secondary token (use the primary Auth Token of the account "
        "that owns the number)"
    )
    assert other not in line


def test_a_flood_of_forged_posts_is_explained_once_a_minute(make_app, personas, caplog):
    # Anyone can post to a public /sms: working out why each was refused (a few dozen HMACs
    # and a file read) made every forged post expensive. The first is explained, for the user
    # whose PUBLIC_URL is wrong; the rest of the minute's are refused without it.
    app = make_app(public_url="https://clone.example.com", twilio_auth_token="f" * 32)
    write_tunnel_url(app, "https://abc.ngrok-free.app")
    other = "0123456789abcdef0123456789abcdef"
    client = app.test_client()
    caplog.set_level(logging.DEBUG, logger="phischer.security")
    statuses = []
    for i in range(20):
        params = sms_params(f"forged {i}", "+15551234567")
        signature = sign(other, "https://clone.example.com/sms", params)
        r = client.post("/sms", data=params, headers={"X-Twilio-Signature": signature})
        statuses.append(r.status_code)
    assert statuses == [403] * 20
    with app.extensions["phischer"].db.read() as session:
        assert list(session.scalars(sa.select(Message))) == []
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "phischer.security"]
    assert [level for level, _ in lines] == ["WARNING"] + ["DEBUG"] * 19
    assert lines[0][1].startswith(PREFIX + "https://clone.example.com/sms: it was checked for ")
    assert lines[0][1].endswith(
        "TWILIO_AUTH_TOKEN may be another account's, or a rotated or "
        "secondary token (use the primary Auth Token of the account "
        "that owns the number)"
    )
    assert {text for _, text in lines[1:]} == {
        PREFIX + "https://clone.example.com/sms (explained once a minute)"
    }


# What Heroku's router (and Fly's, Render's) sends after terminating TLS: the public Host
# as it was, and the scheme and port it took the request on.
PLATFORM_ROUTER = {
    "Host": "clone.herokuapp.com",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-For": "203.0.113.7",
}


def test_behind_a_platform_router_the_url_checked_has_no_default_port(make_app, personas, caplog):
    # ProxyFix put X-Forwarded-Port into Host: the line named https://clone.herokuapp.com:443
    # and told the user to set the number's SMS URL to it.
    app = make_app(trust_proxy=True)
    line = refused(app, "http://clone.herokuapp.com/sms", caplog, PLATFORM_ROUTER)
    assert line == (
        PREFIX + "https://clone.herokuapp.com/sms: it fits http://clone.herokuapp.com/sms "
        "(another scheme or port): Twilio signs the SMS URL exactly as it is set on the number, "
        "so set PUBLIC_URL=http://clone.herokuapp.com, or set the number's SMS URL to "
        "https://clone.herokuapp.com/sms"
    )


def test_without_twilio_auth_token_a_refusal_says_to_set_it(make_app, personas, caplog):
    # A platform deploy with the token left out of its config vars: the server checks with
    # a development token it generated, and "TWILIO_AUTH_TOKEN may be another account's"
    # sent the user looking for a mistyped token they had never set.
    app = make_app(trust_proxy=True)
    real = "0123456789abcdef0123456789abcdef"
    line = refused(app, "https://clone.herokuapp.com/sms", caplog, PLATFORM_ROUTER, real)
    instance = app.extensions["phischer"].settings.instance_path
    assert line == (
        PREFIX + "https://clone.herokuapp.com/sms: TWILIO_AUTH_TOKEN is not set, so signatures "
        f"are checked with the development token in {instance / 'dev_auth_token'}, which only "
        "`phischer text`/`chat` sign with: set TWILIO_AUTH_TOKEN to the Auth Token of the "
        "account that owns the number"
    )
