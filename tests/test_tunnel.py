"""`phischer tunnel` / `phischer up`: tunnel, Twilio number registration and restore, offline.

Twilio is the loopback fake in tests/fake_twilio.py reached through the real SDK; ngrok is an
injected opener, except for `open_ngrok` itself, which drives pyngrok against the fake agent
binary in tests/fake_ngrok.py; "waiting for Ctrl-C" is an injected function that checks the
live state and then raises KeyboardInterrupt like Ctrl-C would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from twilio.base.exceptions import TwilioRestException

from phischer import ngrok_agent, stopping, tunnel, tunnel_types, up, webhook_registration
from phischer.config import Settings
from phischer.twilio_client import (
    LAST_REQUEST_S,
    RETRY_DELAYS_S,
    TWILIO_HTTP_TIMEOUT_S,
    RebasingHttpClient,
    TwilioConfigError,
    make_twilio_client,
)
from tests import fake_ngrok
from tests.conftest import (
    ADA_PAIRS,
    free_port,
    post_signed,
    run,
    sign,
    sms_params,
    twiml_bodies,
    write_dataset,
)
from tests.fake_twilio import FakeTwilio

PHONE = "+15550001111"
OLD_URL = "https://old.example.com/sms"
TUNNEL_URL = "https://abc123.ngrok-free.app"
ROOT = Path(__file__).resolve().parent.parent
# A restore gets this many tries: a failure that lasts is scripted for each of them.
RESTORE_TRIES = len(RETRY_DELAYS_S) + 1

# Every test runs with the fake's Twilio credentials in the environment, as in a user's .env.
pytestmark = pytest.mark.usefixtures("twilio_env")


class FakeNgrok:
    """An injected tunnel opener: records the port it was asked for and whether it was closed."""

    def __init__(self, url: str = TUNNEL_URL) -> None:
        self.url = url
        self.ports: list[int] = []
        self.closed = 0

    def __call__(self, port: int) -> tunnel_types.Tunnel:
        self.ports.append(port)
        return tunnel_types.Tunnel(public_url=self.url, close=self._close)

    def _close(self) -> None:
        self.closed += 1


class Stop:
    """An injected wait: runs `check(exposure)` while everything is live, then acts like Ctrl-C."""

    def __init__(self, check: Callable[[tunnel.Exposure], None] | None = None) -> None:
        self.check = check
        self.exposure: tunnel.Exposure | None = None

    def __call__(self, exposure: tunnel.Exposure) -> None:
        self.exposure = exposure
        if self.check is not None:
            self.check(exposure)
        raise KeyboardInterrupt


@pytest.fixture
def number(fake_twilio: FakeTwilio) -> dict[str, Any]:
    """Our Twilio number, currently pointing at some older webhook with GET."""
    return fake_twilio.add_number(PHONE, sms_url=OLD_URL, sms_method="GET")


@pytest.fixture
def twilio_env(monkeypatch: pytest.MonkeyPatch, fake_twilio: FakeTwilio) -> None:
    """Twilio credentials and the fake's URL in the environment, as a user's .env would."""
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", fake_twilio.account_sid)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake_twilio.auth_token)
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", PHONE)
    monkeypatch.setenv("TWILIO_API_BASE_URL", fake_twilio.url)


@pytest.fixture
def ngrok(monkeypatch: pytest.MonkeyPatch) -> FakeNgrok:
    """Replace the pyngrok opener used by the CLI."""
    fake = FakeNgrok()
    monkeypatch.setattr(ngrok_agent, "open_ngrok", fake)
    return fake


@pytest.fixture
def stop(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Stop]:
    """Install an injected wait for the CLI commands; returns it for inspection."""

    def install(check: Callable[[tunnel.Exposure], None] | None = None) -> Stop:
        waiter = Stop(check)
        monkeypatch.setattr(tunnel, "wait_for_shutdown", waiter)
        return waiter

    return install


@pytest.fixture
def serving() -> int:
    """A port where something listens, standing in for `phischer serve`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def run_live(ngrok: FakeNgrok, stop: Callable[..., Stop]) -> Callable[..., Any]:
    """Run `tunnel` or `up` (fake ngrok): `check(exposure)` runs while all is live, then Ctrl-C.

    The command must exit 0; returns click's result.
    """

    def invoke(*args: str, check: Callable[[tunnel.Exposure], None] | None = None) -> Any:
        stop(check)
        result = run(*args)
        assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def refused(ngrok: FakeNgrok, stop: Callable[..., Stop]) -> Callable[..., str]:
    """Run a command that must fail before any tunnel opens: exit 1; returns its output."""

    def invoke(*args: str) -> str:
        stop()
        result = run(*args)
        assert result.exit_code == 1
        assert ngrok.ports == []
        return result.output

    return invoke


def fake_settings(fake: FakeTwilio) -> Settings:
    """Settings whose Twilio REST calls go to the fake, for our number."""
    return Settings.from_env(
        {
            "TWILIO_ACCOUNT_SID": fake.account_sid,
            "TWILIO_AUTH_TOKEN": fake.auth_token,
            "TWILIO_PHONE_NUMBER": PHONE,
            "TWILIO_API_BASE_URL": fake.url,
        }
    )


def post_sms(port: int, signed_for: str) -> requests.Response:
    """POST a text to the server on `port`, signed (like Twilio) for the URL `signed_for`."""
    return post_signed(
        f"http://127.0.0.1:{port}/sms",
        os.environ["TWILIO_AUTH_TOKEN"],
        sms_params("hey how are you"),
        signed_for=signed_for,
    )


def updates(fake: FakeTwilio, number: dict[str, Any]) -> list[dict[str, str]]:
    """The forms POSTed to the number's resource, in order."""
    return [r.form for r in fake.calls("POST", f"/IncomingPhoneNumbers/{number['sid']}.json")]


def warnings(output: str) -> list[str]:
    """The warning lines of a command's output."""
    return [line for line in output.splitlines() if line.startswith("Warning")]


def instance() -> Path:
    return Path(os.environ["INSTANCE_PATH"])


def record_of(number: dict[str, Any]) -> dict[str, Any]:
    """The state file's record of `number` (what the run that changed it keeps)."""
    return json.loads((instance() / webhook_registration.STATE_FILE).read_text())[number["sid"]]


def dispositions() -> dict[int, Any]:
    """The current handlers of SIGTERM and SIGHUP."""
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}


class _SignalledWhenFreed:
    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)  # Python runs the handler before raise_signal returns


def lose_a_signal(signum: int = signal.SIGTERM) -> None:
    """Deliver `signum` inside a finalizer, where Python drops whatever the handler raises.

    What SQLAlchemy's weakref callback `_collection_gced` did to `phischer up`: the handler's
    KeyboardInterrupt became "Exception ignored in …" and startup went on.
    """
    _SignalledWhenFreed(signum)  # freed at once: __del__ runs here


@contextmanager
def watchdog(seconds: float = 30) -> Iterator[list[bool]]:
    """Interrupt the main thread like Ctrl-C after `seconds`: a stop that was lost hangs no test."""
    fired: list[bool] = []
    main = threading.main_thread().ident
    assert main is not None

    def bark() -> None:
        fired.append(True)
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Timer(seconds, bark)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


# -- phischer tunnel -----------------------------------------------------------------------


def test_tunnel_registers_then_restores_previous_url_and_method(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    run_live: Callable[..., Any],
    serving: int,
) -> None:
    seen: dict[str, Any] = {}

    def check(exposure: tunnel.Exposure) -> None:
        seen["file"] = (instance() / "public_url").read_text().strip()
        seen["live"] = (number["sms_url"], number["sms_method"])
        seen["closed"] = ngrok.closed

    result = run_live("tunnel", "--port", str(serving), check=check)

    assert ngrok.ports == [serving]
    assert seen == {
        "file": TUNNEL_URL,
        "live": (f"{TUNNEL_URL}/sms", "POST"),
        "closed": 0,
    }
    assert updates(fake_twilio, number) == [
        {"SmsUrl": f"{TUNNEL_URL}/sms", "SmsMethod": "POST"},
        {"SmsUrl": OLD_URL, "SmsMethod": "GET"},
    ]
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    assert f"Tunnel open: {TUNNEL_URL} → http://127.0.0.1:{serving}" in result.output
    assert f"Twilio will POST texts to {PHONE} to {TUNNEL_URL}/sms" in result.output
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in result.output
    assert (
        f"Server found on 127.0.0.1:{serving}; if it runs from this folder it reads the "
        f"public URL from {instance() / 'public_url'} (else set PUBLIC_URL where it runs)."
    ) in result.output.splitlines()
    assert "Warning" not in result.output


def test_tunnel_no_restore_leaves_our_url(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, run_live: Callable[..., Any]
) -> None:
    port = free_port()  # nothing listens there, whatever else runs on this machine
    result = run_live("tunnel", "--no-restore", "--port", str(port))

    assert updates(fake_twilio, number) == [{"SmsUrl": f"{TUNNEL_URL}/sms", "SmsMethod": "POST"}]
    assert number["sms_url"] == f"{TUNNEL_URL}/sms"
    assert ngrok.ports == [port]
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    assert "Restored" not in result.output
    assert (
        f"Warning: nothing listens on 127.0.0.1:{port} yet: start `phischer serve --port {port}` "
        "(or use `phischer up`), else Twilio logs error 11200"
    ) in result.output.splitlines()
    # The tunnel closes: the URL the number keeps is dead, and the user must hear it.
    assert result.output.splitlines()[-1] == (
        f"Warning: the SMS URL of {PHONE} stays {TUNNEL_URL}/sms (--no-restore), which stops "
        f"working as the tunnel closes: texts fail (Twilio error 11200) until you point the "
        f"number elsewhere in the Twilio console or run `phischer up` or `tunnel` again"
    )


@pytest.mark.parametrize("source", ["option", "PUBLIC_URL"])
def test_tunnel_no_restore_on_a_public_url_keeps_the_server_checking_against_it(
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    run_live: Callable[..., Any],
    make_app: Any,
    personas: Any,
    source: str,
) -> None:
    """The number stays on the URL after the run: a server must still accept Twilio's texts."""
    keep = "https://keep.example.com"
    args = ["--public-url", keep] if source == "option" else []
    if source == "PUBLIC_URL":
        monkeypatch.setenv("PUBLIC_URL", keep)
    app = make_app()  # `phischer serve`, started without PUBLIC_URL before the tunnel
    client = app.test_client()
    token = os.environ["TWILIO_AUTH_TOKEN"]

    def text(url: str) -> int:
        params = sms_params("hey how are you")
        response = client.post(
            "/sms", data=params, headers={"X-Twilio-Signature": sign(token, url, params)}
        )
        return response.status_code

    during: list[int] = []
    result = run_live(
        "tunnel", "--no-restore", *args, check=lambda e: during.append(text(f"{keep}/sms"))
    )

    assert updates(fake_twilio, number) == [{"SmsUrl": f"{keep}/sms", "SmsMethod": "POST"}]
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    # Twilio goes on calling the URL; the server goes on checking signatures against it, even
    # one started before PUBLIC_URL was in .env.
    assert (instance() / "public_url").read_text().strip() == keep
    assert (during, text(f"{keep}/sms"), text("http://localhost/sms")) == ([200], 200, 403)
    kept = (
        f"The SMS URL of {PHONE} stays {keep}/sms (--no-restore); {instance() / 'public_url'} "
        f"keeps {keep} for the server's signature checks."
    )
    hint = (
        f"Hint: set PUBLIC_URL={keep} in .env so `phischer serve` keeps validating signatures "
        f"for it."
    )
    expected = [kept, hint] if source == "option" else [kept]  # PUBLIC_URL is there already
    assert result.output.splitlines()[-len(expected) :] == expected


def test_tunnel_refuses_port_0(fake_twilio: FakeTwilio, ngrok: FakeNgrok) -> None:
    """`up --port 0` picks a free port itself; `tunnel` must be told the server's real one."""
    result = run("tunnel", "--port", "0")

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--port': 0 is not in the range 1<=x<=65535."
    )
    assert (fake_twilio.requests, ngrok.ports) == ([], [])


def test_tunnel_number_not_on_account_is_one_line_and_opens_no_tunnel(
    fake_twilio: FakeTwilio, refused: Callable[..., str]
) -> None:
    fake_twilio.add_number("+15550009999")

    assert refused("tunnel") == (
        f"Error: TWILIO_PHONE_NUMBER={PHONE} is not a number of Twilio account "
        f"{fake_twilio.account_sid}: use one listed under Phone Numbers → Active numbers, "
        f"in E.164 (+15551234567)\n"
    )
    assert fake_twilio.calls("POST", ".json") == []


def test_up_on_the_whatsapp_sandbox_serves_and_says_where_to_paste_the_url(
    fake_twilio: FakeTwilio,
    ngrok: FakeNgrok,
    monkeypatch: pytest.MonkeyPatch,
    run_live: Callable[..., Any],
    personas: Any,
) -> None:
    """Twilio's API cannot point the sandbox anywhere: serve, and say what to set by hand."""
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", webhook_registration.WHATSAPP_SANDBOX)
    sandbox = webhook_registration.WHATSAPP_SANDBOX
    replies: list[list[str]] = []

    def check(exposure: tunnel.Exposure) -> None:
        params = sms_params("hey how are you", from_="whatsapp:+15550100", To=f"whatsapp:{sandbox}")
        response = post_signed(
            f"http://127.0.0.1:{exposure.port}/sms",
            fake_twilio.auth_token,
            params,
            signed_for=f"{TUNNEL_URL}/sms",
        )
        replies.append(twiml_bodies(response.content))

    result = run_live("up", "--port", "0", check=check)

    assert replies == [["Splendid, thank you! Knitting a scarf for the cat."]]
    lines = result.output.splitlines()
    assert (
        f"WhatsApp: {sandbox} is Twilio's WhatsApp sandbox, whose webhook only the Twilio "
        "Console sets: open Messaging → Try it out → Send a WhatsApp message → Sandbox settings, "
        f"set 'When a message comes in' to {TUNNEL_URL}/sms (POST) and save."
    ) in lines
    assert f"Twilio   {TUNNEL_URL}/sms  → paste as the WhatsApp webhook of {sandbox}" in lines
    assert (
        f"Message {sandbox} on WhatsApp once it is pasted: you are talking to Ada (#ada)."
    ) in lines
    assert "Ctrl-C to stop." in lines
    # On stop: nothing to restore, but the pasted URL dies with the tunnel.
    assert lines[-1] == (
        f"WhatsApp: {sandbox}'s webhook stays {TUNNEL_URL}/sms, which stops working as the "
        "tunnel closes: paste the next run's URL in the Twilio Console (texts fail with error "
        "11200 until then)"
    )
    assert fake_twilio.calls("POST", ".json") == []
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()


def test_tunnel_for_a_whatsapp_sender_says_where_its_webhook_is_set(
    fake_twilio: FakeTwilio,
    monkeypatch: pytest.MonkeyPatch,
    run_live: Callable[..., Any],
    serving: int,
) -> None:
    """A WhatsApp sender (a number not hosted on Twilio) has no SMS URL to register."""
    fake_twilio.add_number("+15550009999")
    fake_twilio.add_whatsapp_sender(PHONE)

    result = run_live("tunnel", "--port", str(serving), "--public-url", "https://sms.example.org")

    lines = result.output.splitlines()
    assert (
        f"WhatsApp: {PHONE} is a WhatsApp sender, not a phone number of the account, and its "
        "webhook is set in the Twilio Console: open Messaging → Senders → WhatsApp senders → "
        f"{PHONE}, set the webhook URL for incoming messages to https://sms.example.org/sms "
        "(POST) and save."
    ) in lines
    assert not any("Twilio will POST" in line or "Error" in line for line in lines)
    assert lines[-2:] == ["Ctrl-C to stop.", "Shutting down…"]  # a URL of the user's: it lasts
    assert fake_twilio.calls("POST", ".json") == []


def test_a_number_that_is_no_whatsapp_sender_either_gets_the_usual_error(
    fake_twilio: FakeTwilio, refused: Callable[..., str]
) -> None:
    fake_twilio.add_whatsapp_sender("+15550002222")
    # Credentials that may not read senders: no guess, the usual line.
    fake_twilio.fail_next("GET", "/v2/Channels/Senders", 403, 20003, "Permission denied")

    assert refused("tunnel").startswith(
        f"Error: TWILIO_PHONE_NUMBER={PHONE} is not a number of Twilio account"
    )
    assert refused("tunnel").startswith(
        f"Error: TWILIO_PHONE_NUMBER={PHONE} is not a number of Twilio account"
    )
    assert len(fake_twilio.calls("GET", "/v2/Channels/Senders")) == 2


def test_tunnel_partial_pattern_matches_are_not_taken_for_the_number(
    fake_twilio: FakeTwilio, refused: Callable[..., str]
) -> None:
    # Twilio's PhoneNumber filter is a pattern: +1 5550001111 0 contains our digits.
    other = fake_twilio.add_number("+155500011110")

    assert "(similar numbers there: +155500011110)" in refused("tunnel")
    assert updates(fake_twilio, other) == []


def service_warning(service_sid: str, now: str) -> str:
    """The warning for PHONE in Messaging Service 'Clone service' whose inbound setting is `now`."""
    return (
        f"Warning: {PHONE} belongs to Messaging Service 'Clone service' ({service_sid}), "
        f"whose incoming-message setting wins over the number's SMS URL (now: {now}): in the "
        f"Twilio console open Messaging → Services → Clone service → Integration and choose "
        f"'Send a webhook' with {TUNNEL_URL}/sms (POST) or 'Defer to sender's webhook', or "
        f"remove the number from the service"
    )


def test_tunnel_several_matches_is_an_error(
    fake_twilio: FakeTwilio, refused: Callable[..., str]
) -> None:
    first = fake_twilio.add_number(PHONE)
    second = fake_twilio.add_number(PHONE)

    assert refused("tunnel") == (
        f"Error: TWILIO_PHONE_NUMBER={PHONE} matches 2 numbers on account "
        f"{fake_twilio.account_sid} ({first['sid']}, {second['sid']}): remove the duplicates "
        f"so exactly one remains\n"
    )
    assert fake_twilio.calls("POST", ".json") == []


def test_tunnel_warns_when_a_messaging_service_handles_incoming_sms(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    run_live: Callable[..., Any],
    serving: int,
) -> None:
    fake_twilio.add_service("Other", [fake_twilio.add_number("+15550002222")])
    fake_twilio.add_service("Defers", [number], use_inbound_webhook_on_number=True)
    service = fake_twilio.add_service(
        "Clone service", [number], inbound_request_url="https://hooks.example.com/in"
    )
    result = run_live("tunnel", "--port", str(serving))

    assert warnings(result.output) == [
        service_warning(service["sid"], now="https://hooks.example.com/in")
    ]
    # The lookup went to messaging.twilio.com's paths, served by the fake.
    assert len(fake_twilio.calls("GET", "/v1/Services")) == 1
    assert len(fake_twilio.calls("GET", "/PhoneNumbers")) == 3
    # Still registered and restored: the warning is advice, not a failure.
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", OLD_URL]


def test_tunnel_warns_when_a_twiml_app_handles_incoming_sms(
    fake_twilio: FakeTwilio, run_live: Callable[..., Any], serving: int
) -> None:
    app_sid = "AP" + "1" * 32
    number = fake_twilio.add_number(PHONE, sms_url=OLD_URL, sms_application_sid=app_sid)
    result = run_live("tunnel", "--port", str(serving))

    assert warnings(result.output) == [
        f"Warning: {PHONE} sends incoming SMS to TwiML App {app_sid} (sms_application_sid), "
        f"which ignores the number's SMS URL: in the Twilio console open Phone Numbers → "
        f"Active numbers → {PHONE} → Messaging configuration and set 'A message comes in' to "
        f"Webhook, or set that app's Messaging Request URL to {TUNNEL_URL}/sms (POST)"
    ]
    assert number["sms_url"] == OLD_URL  # restored


@pytest.mark.parametrize("defers", [False, True])
def test_a_service_sid_in_sms_application_sid_is_not_called_a_twiml_app(
    fake_twilio: FakeTwilio, run_live: Callable[..., Any], serving: int, defers: bool
) -> None:
    """Twilio links a number to its Messaging Service through sms_application_sid (MG…)."""
    number = fake_twilio.add_number(PHONE, sms_url=OLD_URL)
    service = fake_twilio.add_service(
        "Clone service", [number], inbound_request_url=None, use_inbound_webhook_on_number=defers
    )
    number["sms_application_sid"] = service["sid"]
    result = run_live("tunnel", "--port", str(serving))

    expected = [service_warning(service["sid"], now="none (messages are dropped)")]
    assert warnings(result.output) == ([] if defers else expected)
    assert number["sms_url"] == OLD_URL


def test_messaging_services_that_cannot_be_listed_are_a_warning_not_a_failure(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any], serving: int
) -> None:
    fake_twilio.fail_next("GET", "/v1/Services", 403, 20003, "Permission denied")
    result = run_live("tunnel", "--port", str(serving))

    assert warnings(result.output) == [
        f"Warning: could not check Messaging Services (Twilio refused to list your Messaging "
        f"Services (HTTP 403, error 20003: Permission denied): the credentials lack permission "
        f"(use the account's own SID and token)); if {PHONE} is in one, its incoming settings "
        f"may win over the number's SMS URL"
    ]
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", OLD_URL]


def test_tunnel_public_url_option_skips_ngrok(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, run_live: Callable[..., Any]
) -> None:
    files: list[str] = []
    result = run_live(
        "tunnel",
        "--public-url",
        "https://sms.example.org/",
        check=lambda exposure: files.append((instance() / "public_url").read_text().strip()),
    )

    assert ngrok.ports == []
    assert files == ["https://sms.example.org"]
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [
        "https://sms.example.org/sms",
        OLD_URL,
    ]
    assert "Using the public URL https://sms.example.org (no ngrok)." in result.output
    assert not (instance() / "public_url").exists()


def test_tunnel_uses_public_url_from_environment_instead_of_ngrok(
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    run_live: Callable[..., Any],
) -> None:
    monkeypatch.setenv("PUBLIC_URL", "https://mine.example.net")
    result = run_live("tunnel")

    assert ngrok.ports == []
    assert updates(fake_twilio, number)[0]["SmsUrl"] == "https://mine.example.net/sms"
    assert "ngrok address" not in result.output


@pytest.mark.parametrize("command", ["tunnel", "up"])
def test_a_public_url_on_ngrok_warns_that_no_tunnel_is_opened_for_it(
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    run_live: Callable[..., Any],
    personas: Any,
    command: str,
) -> None:
    """PUBLIC_URL kept from an earlier tunnel: phischer starts no agent, and Twilio was told a
    URL nobody serves while the banner said "Text … now", with nothing to say why."""
    monkeypatch.setenv("PUBLIC_URL", TUNNEL_URL)
    result = run_live(command, "--port", "5123")

    assert ngrok.ports == []
    assert warnings(result.output)[0] == (
        f"Warning: {TUNNEL_URL} is an ngrok address, and with a public URL (--public-url or "
        f"PUBLIC_URL) phischer opens no tunnel: texts reach this run only while an ngrok agent "
        f"you started serves that address to 127.0.0.1:5123, else Twilio gets ngrok's "
        f"'endpoint offline' (error 11200). To have phischer open the tunnel, unset PUBLIC_URL "
        f"and leave out --public-url"
    )


@pytest.mark.parametrize("command", ["tunnel", "up"])
@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("sms.example.org", "must be an absolute base URL such as https://sms.example.com"),
        (
            "https://sms.example.com#frag",
            "has a #fragment, which would hide the /sms phischer adds from Twilio: give the base "
            "URL without it (https://sms.example.com)",
        ),
        (
            "https://x.example.com:99999",
            "has an impossible port: use one from 1 to 65535, or leave it out",
        ),
    ],
)
def test_a_public_url_twilio_could_not_call_is_refused_in_one_line(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    refused: Callable[..., str],
    command: str,
    url: str,
    error: str,
) -> None:
    assert refused(command, "--public-url", url) == f"Error: --public-url={url!r} {error}\n"
    assert fake_twilio.requests == []
    assert number["sms_url"] == OLD_URL


@pytest.mark.parametrize("command", ["tunnel", "up"])
@pytest.mark.parametrize(
    ("missing", "hint"),
    [
        ("TWILIO_ACCOUNT_SID", "the Account SID (AC…) from console.twilio.com → Account info"),
        ("TWILIO_AUTH_TOKEN", "the Auth Token from console.twilio.com → Account info"),
        (
            "TWILIO_PHONE_NUMBER",
            "your Twilio number in E.164, e.g. +15551234567 (Phone Numbers → Active numbers)",
        ),
    ],
)
def test_missing_twilio_variable_is_named_before_any_tunnel(
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    refused: Callable[..., str],
    command: str,
    missing: str,
    hint: str,
) -> None:
    monkeypatch.delenv(missing)

    assert refused(command) == f"Error: {missing} is not set: add {hint} to .env\n"
    assert fake_twilio.requests == []
    assert not (instance() / "phischer.db").exists()  # `up` stopped before migrating


@pytest.mark.parametrize("command", ["tunnel", "up"])
def test_an_api_key_sid_is_refused_in_one_line_before_any_call(
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    refused: Callable[..., str],
    command: str,
) -> None:
    """An API key (SK…) and its secret: Twilio answers 404, and webhooks are not signed so."""
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "SK" + "1" * 32)
    assert refused(command) == (
        "Error: TWILIO_ACCOUNT_SID=SK… is not an Account SID (an API key's SID starts with SK, "
        "and phischer cannot use API keys): set the Account SID (AC…) from console.twilio.com "
        "→ Account info, and TWILIO_AUTH_TOKEN to that account's Auth Token\n"
    )
    assert fake_twilio.requests == []


def test_wrong_credentials_are_one_line(
    monkeypatch: pytest.MonkeyPatch, number: dict[str, Any], refused: Callable[..., str]
) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-token")

    assert refused("tunnel") == (
        "Error: Twilio refused to list your phone numbers (HTTP 401, error 20003: "
        "Authenticate): check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN\n"
    )


def test_quotes_and_blanks_around_the_twilio_variables_are_not_part_of_them(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    run_live: Callable[..., Any],
    personas: Any,
) -> None:
    """As docker --env-file or a CRLF .env hands them over: Twilio and the signatures agree."""
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", f'"{fake_twilio.account_sid}"')
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", f" '{fake_twilio.auth_token}'\r")
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", f'"{PHONE}" ')
    statuses: list[int] = []

    def check(exposure: tunnel.Exposure) -> None:
        # Signed as Twilio signs, with the token itself.
        response = post_signed(
            f"http://127.0.0.1:{exposure.port}/sms",
            fake_twilio.auth_token,
            sms_params("hey how are you"),
            signed_for=f"{TUNNEL_URL}/sms",
        )
        statuses.append(response.status_code)

    run_live("up", "--port", "0", check=check)

    assert statuses == [200]
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", OLD_URL]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_sigterm_restores_like_ctrl_c(
    number: dict[str, Any],
    ngrok: FakeNgrok,
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
) -> None:
    """SIGTERM (a supervisor, `kill`) and SIGHUP (the terminal window closed) stop cleanly."""

    def terminated(exposure: tunnel.Exposure) -> None:
        assert number["sms_url"] == f"{TUNNEL_URL}/sms"
        os.kill(os.getpid(), signum)
        time.sleep(30)  # the handler interrupts this at once
        raise AssertionError(f"{signum.name} did not stop the wait")

    monkeypatch.setattr(tunnel, "wait_for_shutdown", terminated)
    with disposition(signum, signal.SIG_DFL):  # not ignored, as under nohup (tested below)
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
        result = run("tunnel")
        after = {sig: signal.getsignal(sig) for sig in before}

    assert result.exit_code == 0, result.output
    assert "Shutting down…" in result.output
    assert number["sms_url"] == OLD_URL
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert after == before


@contextmanager
def disposition(signum: int, handler: Any) -> Iterator[None]:
    """Run the block with `handler` for `signum`, as a parent process (nohup, a shell) set it."""
    old = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, old)


def test_a_hangup_that_nohup_ignores_does_not_stop_the_run(
    number: dict[str, Any], ngrok: FakeNgrok, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nohup phischer up &`: closing the terminal must not stop the run nohup was asked to keep."""
    survived: list[bool] = []

    def hung_up(exposure: tunnel.Exposure) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.3)  # a handler raising KeyboardInterrupt would cut this short
        survived.append(number["sms_url"] == f"{TUNNEL_URL}/sms")
        raise KeyboardInterrupt  # the Ctrl-C (or SIGTERM) that does stop it, later

    monkeypatch.setattr(tunnel, "wait_for_shutdown", hung_up)
    with disposition(signal.SIGHUP, signal.SIG_IGN):
        result = run("tunnel")
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN

    assert result.exit_code == 0, result.output
    assert survived == [True]
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


def press_ctrl_c_while_restoring(fake: FakeTwilio, number: dict[str, Any], presses: int) -> None:
    """Press Ctrl-C `presses` times more while the restore waits for Twilio's answer."""
    main = threading.main_thread().ident
    assert main is not None

    def press() -> None:
        for seen in range(presses):
            signal.pthread_kill(main, signal.SIGINT)
            deadline = time.monotonic() + 10
            # One at a time: two pending SIGINTs would reach the handler as one.
            while stopping._stop.presses == seen and seen + 1 < presses:
                assert time.monotonic() < deadline, "the handler never ran"
                time.sleep(0.01)

    # The restore reads the number before changing it back: the presses land there.
    fake.after_next("GET", f"/IncomingPhoneNumbers/{number['sid']}.json", press)


def test_a_second_ctrl_c_while_restoring_does_not_cut_the_restore_short(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    stop: Callable[..., Stop],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """People press Ctrl-C twice: the number must still get its URL back, and they hear why."""
    stop()
    press_ctrl_c_while_restoring(fake_twilio, number, presses=1)
    with watchdog():
        result = run("tunnel")

    assert result.exit_code == 0, result.output
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in result.output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert ngrok.closed == 1
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    assert capfd.readouterr().err == stopping.STILL_STOPPING.decode()


def test_ctrl_c_pressed_on_quits_at_once_saying_what_to_set_by_hand(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    stop: Callable[..., Stop],
) -> None:
    """A third Ctrl-C (a shutdown that hangs) quits; the number's fix is printed and remembered."""
    stop()
    press_ctrl_c_while_restoring(fake_twilio, number, presses=2)
    with watchdog():
        result = run("tunnel")

    assert result.exit_code == 1, result.output  # click's "Aborted!"
    assert [line for line in result.output.splitlines() if line][-2:] == [
        f"Warning: quit before the SMS URL of {PHONE} was restored: set it back to {OLD_URL} "
        f"(GET) in the Twilio console (Phone Numbers → Active numbers → {PHONE}), or run "
        f"`phischer tunnel` again: it repairs it",
        "Aborted!",
    ]
    assert number["sms_url"] == f"{TUNNEL_URL}/sms"
    assert ngrok.closed == 1  # the rest of the shutdown still ran
    assert not (instance() / "public_url").exists()
    assert (instance() / webhook_registration.STATE_FILE).exists()  # the next run restores from it


def test_a_stop_signal_swallowed_by_a_finalizer_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler's exception can be dropped; the stop it stands for cannot."""
    dropped: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    before = dispositions()

    with stopping.sigterm_as_interrupt():
        stopping.stop_if_requested()  # nothing asked yet: startup goes on
        lose_a_signal()  # returns: the KeyboardInterrupt went nowhere
        with pytest.raises(KeyboardInterrupt):
            stopping.stop_if_requested()  # the next startup step stops
        signal.raise_signal(signal.SIGTERM)  # the stop is under way: a repeat must not cut it

    with stopping.sigterm_as_interrupt():
        lose_a_signal(signal.SIGHUP)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)  # not ignored for good (it was SIG_IGN)
        with pytest.raises(KeyboardInterrupt), watchdog() as barked:
            tunnel.wait_for_shutdown(None)  # type: ignore[arg-type]  # the wait sees it too
        assert not barked

    assert dispositions() == before
    assert sys.unraisablehook == dropped.append
    assert dropped == []  # no "Exception ignored in …" on the terminal
    stopping.stop_if_requested()  # nothing pending outside


@pytest.mark.parametrize(
    ("command", "when"),
    [
        ("tunnel", "Tunnel open:"),  # tunnel open, number not changed yet
        ("up", "Using the public URL"),  # serving, number not changed yet
        ("up", "Text "),  # number changed, before the "Ctrl-C to stop" line
        ("up", "Ctrl-C to stop"),  # live, waiting
    ],
)
def test_a_stop_swallowed_during_startup_or_the_wait_still_stops_and_restores(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    when: str,
) -> None:
    dropped: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    opener = FakeNgrok()
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith(when) and "(signal lost)" not in lines:
            lines.append("(signal lost)")
            lose_a_signal()

    before = dispositions()
    aborted = False
    with watchdog() as barked:
        try:
            if command == "tunnel":
                tunnel.run_tunnel(Settings.from_env(), opener=opener, echo=echo)
            else:
                url = "https://walk.example.test"
                up.run_up(Settings.from_env(), port=0, public_url=url, echo=echo)
        except KeyboardInterrupt:
            aborted = True  # the CLI prints "Aborted!" and exits 1, as for Ctrl-C in startup

    assert not barked, lines
    assert "(signal lost)" in lines
    live = when == "Ctrl-C to stop"
    assert (aborted, "Shutting down…" in lines) == (not live, live), lines
    changed = when in ("Text ", "Ctrl-C to stop")
    assert len(updates(fake_twilio, number)) == (2 if changed else 0)
    assert (f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines) == changed
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert opener.closed == len(opener.ports)
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    assert dispositions() == before
    assert dropped == []


def test_ctrl_c_while_twilio_applies_the_change_still_restores(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, stop: Callable[..., Stop]
) -> None:
    """SIGTERM lands while the SDK waits for Twilio's answer to the update it already applied."""
    main = threading.main_thread().ident
    assert main is not None
    fake_twilio.after_next(
        "POST",
        f"/IncomingPhoneNumbers/{number['sid']}.json",
        lambda: signal.pthread_kill(main, signal.SIGTERM),
    )
    waiter = stop()
    result = run("tunnel")

    assert waiter.exposure is None  # interrupted before the wait
    assert result.exit_code == 1  # setup did not finish: click's "Aborted!", no traceback
    assert [line for line in result.output.splitlines() if line] == [
        f"Tunnel open: {TUNNEL_URL} → http://127.0.0.1:5000",
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET).",
        "Aborted!",
    ]
    assert updates(fake_twilio, number) == [
        {"SmsUrl": f"{TUNNEL_URL}/sms", "SmsMethod": "POST"},
        {"SmsUrl": OLD_URL, "SmsMethod": "GET"},
    ]
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_refused_update_is_one_line_and_undoes_the_tunnel(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, stop: Callable[..., Stop]
) -> None:
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    fake_twilio.fail_next("POST", path, 400, 21502, "Invalid SmsUrl")
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    assert result.output.splitlines()[1:] == [
        f"Error: Twilio refused to update the SMS URL of {PHONE} (HTTP 400, error 21502: "
        f"Unable to update record: Invalid SmsUrl)"
    ]
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert [r.method for r in fake_twilio.calls("POST", path)] == ["POST"]  # no "restore"
    assert fake_twilio.calls("GET", path) == []
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_registration_whose_answer_is_lost_is_sent_again(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    """Twilio applied the change but the connection dropped before its answer: setting the URL
    is idempotent, so it is sent again and the run goes on (it was an error, and the number
    stayed on the tunnel with no record of its URL before)."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    fake_twilio.hang_up_next("POST", path)

    result = run_live("tunnel")

    assert result.output.splitlines()[-1] == f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)."
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [
        f"{TUNNEL_URL}/sms",
        f"{TUNNEL_URL}/sms",
        OLD_URL,
    ]
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


@pytest.mark.parametrize("status", [503, None], ids=["503", "connection"])
def test_a_registration_that_may_have_landed_is_undone_when_it_fails(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    stop: Callable[..., Stop],
    status: int | None,
) -> None:
    """Twilio applied the change, then failed each try (a 5xx, a dropped connection): the run
    fails, but puts the number back first instead of leaving it on the closed tunnel."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    for _ in range(RESTORE_TRIES):
        if status is None:
            fake_twilio.hang_up_next("POST", path)
        else:
            fake_twilio.fail_next("POST", path, status, 20503, "Unavailable", applied=True)
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    failed = (
        f"Error: Twilio refused to update the SMS URL of {PHONE} (HTTP 503, error 20503: "
        f"Unable to update record: Unavailable)"
        if status
        else f"Error: Could not reach Twilio to update the SMS URL of {PHONE} (ConnectionError): "
        f"check your network"
    )
    assert result.output.splitlines()[1:] == [
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET).",
        failed,
    ]
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert ngrok.closed == 1
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_registration_twilio_never_got_leaves_the_number_as_it_was(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, stop: Callable[..., Stop]
) -> None:
    """A 5xx that applied nothing: the number is looked at, found unchanged, and said so."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    fake_twilio.fail_next("POST", path, 500, 20500, "Internal Server Error", times=RESTORE_TRIES)
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    assert result.output.splitlines()[1:] == [
        f"The SMS URL of {PHONE} was not changed ({OLD_URL}).",
        f"Error: Twilio refused to update the SMS URL of {PHONE} (HTTP 500, error 20500: "
        f"Unable to update record: Internal Server Error)",
    ]
    assert len(updates(fake_twilio, number)) == RESTORE_TRIES  # no restore was needed
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_refused_restore_fails_the_command_after_closing_and_the_next_run_repairs_it(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    stop: Callable[..., Stop],
    run_live: Callable[..., Any],
) -> None:
    """Exit 1, so a supervisor sees the number was left on a closed tunnel; one line says why."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    stop(
        lambda exposure: fake_twilio.fail_next(
            "POST", path, 503, 20503, "Unavailable", times=RESTORE_TRIES
        )
    )
    result = run("tunnel")

    assert result.exit_code == 1
    # Tried a few times within seconds (the stop stays prompt), then given up.
    tries = fake_twilio.calls("POST", path)[1:]
    assert len(tries) == RESTORE_TRIES
    assert tries[-1].at - tries[0].at < 5
    assert result.output.splitlines()[-2:] == [
        "Shutting down…",
        f"Error: Twilio refused to restore the SMS URL of {PHONE} (HTTP 503, error 20503: "
        f"Unable to update record: Unavailable): set it back to {OLD_URL} (GET) in the Twilio "
        f"console (Phone Numbers → Active numbers → {PHONE}), or run `phischer tunnel` again: "
        f"it repairs it",
    ]
    assert [w for w in warnings(result.output) if "restore" in w] == []  # said once, above
    # Everything else was still closed.
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    assert number["sms_url"] == f"{TUNNEL_URL}/sms"
    assert (instance() / webhook_registration.STATE_FILE).exists()

    run_live("tunnel")  # the next tunnel has another URL; it restores the original
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


def test_a_restore_failing_during_an_abort_is_a_warning_before_aborted(
    fake_twilio: FakeTwilio, number: dict[str, Any], ngrok: FakeNgrok, stop: Callable[..., Stop]
) -> None:
    """A stop during startup already exits 1 with "Aborted!": the failure must not hide it."""
    main = threading.main_thread().ident
    assert main is not None
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"

    def interrupt_then_refuse() -> None:
        fake_twilio.fail_next("POST", path, 503, 20503, "Unavailable", times=RESTORE_TRIES)
        signal.pthread_kill(main, signal.SIGTERM)

    fake_twilio.after_next("POST", path, interrupt_then_refuse)
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line][-2:] == [
        f"Warning: Twilio refused to restore the SMS URL of {PHONE} (HTTP 503, error 20503: "
        f"Unable to update record: Unavailable): set it back to {OLD_URL} (GET) in the Twilio "
        f"console (Phone Numbers → Active numbers → {PHONE}), or run `phischer tunnel` again: "
        f"it repairs it",
        "Aborted!",
    ]
    assert ngrok.closed == 1


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(429, 1.5), (429, None), (500, None), (503, None)],
    ids=["429-retry-after", "429", "500", "503"],
)
def test_a_restore_twilio_refuses_a_few_times_is_retried(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    run_live: Callable[..., Any],
    status: int,
    retry_after: float | None,
) -> None:
    """Twilio busy (429) or failing (5xx) for a moment while stopping: the number still gets
    its URL back, and a short Retry-After is waited for."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"

    def busy(exposure: tunnel.Exposure) -> None:
        fake_twilio.fail_next("POST", path, status, 20429, "Busy", times=2, retry_after=retry_after)

    result = run_live("tunnel", check=busy)

    assert result.output.splitlines()[-1] == (
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)."
    )
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    tries = fake_twilio.calls("POST", path)[1:]  # the first registered the tunnel
    assert [t.form for t in tries] == [{"SmsUrl": OLD_URL, "SmsMethod": "GET"}] * 3
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= (retry_after or RETRY_DELAYS_S[0])
    assert sum(gaps) < 5


def test_reading_the_number_before_restoring_is_retried_too(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"

    def failing(exposure: tunnel.Exposure) -> None:
        fake_twilio.fail_next("GET", path, 500, 20500, "Internal Server Error", times=2)

    result = run_live("tunnel", check=failing)

    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in result.output
    assert len(fake_twilio.calls("GET", path)) == 3
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


def test_a_restore_whose_connection_drops_is_sent_again(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    """Setting the URL is idempotent: a request that may or may not have landed is repeated."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    result = run_live("tunnel", check=lambda exposure: fake_twilio.hang_up_next("POST", path))

    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in result.output
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [
        f"{TUNNEL_URL}/sms",
        OLD_URL,
        OLD_URL,
    ]


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "reason"),
    [
        (429, 20429, 60, "Too Many Requests"),  # longer than a stop may take: not waited for
        (400, 21502, None, "Invalid SmsUrl"),  # a refusal: asking again gets the same
    ],
    ids=["long-retry-after", "400"],
)
def test_a_restore_that_waiting_cannot_help_fails_at_once(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    stop: Callable[..., Stop],
    status: int,
    code: int,
    retry_after: float | None,
    reason: str,
) -> None:
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    stop(
        lambda exposure: fake_twilio.fail_next(
            "POST", path, status, code, reason, retry_after=retry_after
        )
    )
    started = time.monotonic()
    result = run("tunnel")

    assert time.monotonic() - started < 3
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: Twilio refused to restore the SMS URL of {PHONE} (HTTP {status}, error {code}: "
        f"Unable to update record: {reason}): set it back to {OLD_URL} (GET) in the Twilio "
        f"console (Phone Numbers → Active numbers → {PHONE}), or run `phischer tunnel` again: "
        f"it repairs it"
    )
    assert len(updates(fake_twilio, number)) == 2  # registered, one try to restore


def test_restore_leaves_a_url_someone_changed_meanwhile(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    result = run_live(
        "tunnel", check=lambda exposure: number.update(sms_url="https://someone-else.example/sms")
    )

    assert len(updates(fake_twilio, number)) == 1
    assert number["sms_url"] == "https://someone-else.example/sms"
    assert (
        f"Left the SMS URL of {PHONE} as is: it was changed to "
        "'https://someone-else.example/sms' meanwhile." in result.output
    )


def test_a_run_that_was_killed_is_repaired_by_the_next(
    fake_twilio: FakeTwilio, run_live: Callable[..., Any]
) -> None:
    dead = "https://dead0000.ngrok-free.app/sms"
    number = fake_twilio.add_number(PHONE, sms_url=dead, sms_method="POST")
    instance().mkdir(parents=True, exist_ok=True)
    (instance() / webhook_registration.STATE_FILE).write_text(
        json.dumps(
            {
                "number_sid": number["sid"],
                "phone_number": PHONE,
                "sms_url": dead,
                "previous_url": OLD_URL,
                "previous_method": "GET",
            }
        )
    )
    run_live("tunnel")

    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


def test_a_run_deletes_only_its_own_record(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    """Had another run taken the number over, its record is the only copy of the original URL."""
    other_url = "https://walk2.example.test/sms"
    other = {
        "number_sid": number["sid"],
        "phone_number": PHONE,
        "sms_url": other_url,
        "previous_url": OLD_URL,
        "previous_method": "GET",
        "pid": os.getppid(),  # alive, and not us
    }
    state = instance() / webhook_registration.STATE_FILE
    ours: list[dict[str, Any]] = []

    def check(exposure: tunnel.Exposure) -> None:
        ours.append(record_of(number))
        # What a second run does if the folder lock cannot stop it (a file system without
        # locks, a deleted lock file): it re-points the number and records it.
        state.write_text(json.dumps(other))
        number["sms_url"] = other_url

    result = run_live("tunnel", check=check)

    assert ours[0]["pid"] == os.getpid()
    assert (ours[0]["sms_url"], ours[0]["previous_url"]) == (f"{TUNNEL_URL}/sms", OLD_URL)
    assert (
        f"Left the SMS URL of {PHONE} as is: it was changed to '{other_url}' meanwhile."
    ) in result.output.splitlines()
    assert json.loads(state.read_text()) == other


def test_tunnel_with_app_checks_signatures_against_the_tunnel_url(
    number: dict[str, Any],
    run_live: Callable[..., Any],
    make_app: Any,
    personas: Any,
) -> None:
    """`phischer serve` in another process finds the tunnel URL through the instance folder."""
    app = make_app()  # started before the tunnel, without PUBLIC_URL
    client = app.test_client()
    token = os.environ["TWILIO_AUTH_TOKEN"]
    statuses: dict[str, int] = {}

    def check(exposure: tunnel.Exposure) -> None:
        for name, url in (("tunnel", f"{TUNNEL_URL}/sms"), ("local", "http://localhost/sms")):
            params = sms_params("hey how are you")
            response = client.post(
                "/sms", data=params, headers={"X-Twilio-Signature": sign(token, url, params)}
            )
            statuses[name] = response.status_code

    run_live("tunnel", check=check)

    assert statuses == {"tunnel": 200, "local": 403}


# -- phischer up ---------------------------------------------------------------------------


def test_up_serves_tunnels_registers_and_checks_signatures_end_to_end(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    run_live: Callable[..., Any],
    personas: Any,
) -> None:
    seen: dict[str, Any] = {}

    def check(exposure: tunnel.Exposure) -> None:
        local = f"http://127.0.0.1:{exposure.port}"
        good = post_sms(exposure.port, f"{TUNNEL_URL}/sms")
        seen["good"] = (good.status_code, good.headers["Content-Type"], twiml_bodies(good.content))
        seen["bad"] = post_sms(exposure.port, f"{local}/sms").status_code
        seen["health"] = requests.get(f"{local}/healthz", timeout=10).status_code
        seen["local"] = local

    result = run_live("up", "--port", "0", check=check)

    status, content_type, replies = seen["good"]
    assert status == 200
    assert content_type.startswith("text/xml")
    assert replies == ["Splendid, thank you! Knitting a scarf for the cat."]
    assert seen["bad"] == 403
    assert seen["health"] == 200
    port = int(seen["local"].rsplit(":", 1)[1])
    assert ngrok.ports == [port] and port != 0
    lines = result.output.splitlines()
    assert f"Text {PHONE} now: you are talking to Ada (#ada)." in lines
    assert "Keywords: #ada, #bo (switch persona), #list, #who, #reset, STOP to opt out." in lines
    assert f"Twilio   {TUNNEL_URL}/sms  → SMS URL of {PHONE}" in lines
    # Clean shutdown: number restored, tunnel closed, URL file gone, server stopped.
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", OLD_URL]
    assert number["sms_method"] == "GET"
    assert ngrok.closed == 1
    assert not (instance() / "public_url").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{seen['local']}/healthz", timeout=2)


def test_up_with_public_url_serves_against_that_url(
    number: dict[str, Any],
    ngrok: FakeNgrok,
    run_live: Callable[..., Any],
    personas: Any,
) -> None:
    statuses: list[int] = []

    def check(exposure: tunnel.Exposure) -> None:
        statuses.append(post_sms(exposure.port, "https://sms.example.org/sms").status_code)

    run_live("up", "--port", "0", "--public-url", "https://sms.example.org", check=check)

    assert statuses == [200]
    assert ngrok.ports == []
    assert number["sms_url"] == OLD_URL


def test_up_without_personas_says_how_to_add_one_and_needs_no_restart(
    number: dict[str, Any], run_live: Callable[..., Any], tmp_path: Path
) -> None:
    replies: list[list[str]] = []

    def check(exposure: tunnel.Exposure) -> None:
        # What the user does in a second terminal while `up` runs.
        dataset = write_dataset(tmp_path / "ada.jsonl", ADA_PAIRS)
        added = run("persona", "add", "Ada", "--keyword", "ada", "--dataset", str(dataset))
        assert added.exit_code == 0, added.output
        response = post_sms(exposure.port, f"{TUNNEL_URL}/sms")
        replies.append(twiml_bodies(response.content))

    result = run_live("up", "--port", "0", check=check)

    assert (
        f"Text {PHONE} now — but there is no persona yet: add the bundled samples with "
        "`phischer seed` (as `make run` does), or your own with "
        "`phischer persona add NAME --keyword KW --dataset FILE` (no restart needed)."
    ) in result.output.splitlines()
    assert replies == [["Splendid, thank you! Knitting a scarf for the cat."]]


def test_up_on_a_busy_port_is_one_line_and_opens_no_tunnel(
    fake_twilio: FakeTwilio, number: dict[str, Any], refused: Callable[..., str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        output = refused("up", "--port", str(port))

    assert output == (
        f"Error: Cannot listen on 127.0.0.1:{port} (Address already in use): stop the program "
        f"using it or pass --port N\n"
    )
    assert updates(fake_twilio, number) == []


# -- the ngrok edge ------------------------------------------------------------------------


class _PyngrokTunnel:
    def __init__(self, public_url: str) -> None:
        self.public_url = public_url


# An auth token with characters YAML and logfmt care about, so quoting mistakes show.
NGROK_TOKEN = '2fakeTok_9x: "y" #z'


@pytest.fixture
def fake_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., fake_ngrok.FakeAgent]]:
    """Install the fake ngrok agent first on PATH; every agent pyngrok started is killed after."""
    from pyngrok import conf, installer, ngrok

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pyngrok tried to download ngrok")

    monkeypatch.setattr(installer, "install_ngrok", no_download)
    # Without a config_path pyngrok writes a default one where ngrok keeps its own: not in ~.
    monkeypatch.setattr(conf, "DEFAULT_NGROK_CONFIG_PATH", str(tmp_path / "home" / "ngrok.yml"))
    # Private token files a failing test might leave behind stay in tmp_path, not /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    installed: list[fake_ngrok.FakeAgent] = []

    def install(**kwargs: Any) -> fake_ngrok.FakeAgent:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        agent = fake_ngrok.install(bin_dir, **kwargs)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        assert shutil.which("ngrok") == str(agent.path)
        installed.append(agent)
        return agent

    yield install
    for agent in installed:
        ngrok.kill(pyngrok_config=conf.PyngrokConfig(ngrok_path=str(agent.path)))


def gone(pid: int) -> bool:
    """Whether process PID has exited and been reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_open_ngrok_gives_the_agent_its_token_in_a_private_file_not_argv(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    scheme: str,
) -> None:
    agent = fake_agent(scheme=scheme)
    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)

    with caplog.at_level("DEBUG"):
        opened = ngrok_agent.open_ngrok(5001)
        try:
            seen = agent.record()
            # What `ps` shows to every local user: no token, no --authtoken.
            assert [a for a in seen["argv"] if NGROK_TOKEN in a or a == "--authtoken"] == []
            config = seen["config"]
            assert config is not None, seen["argv"]
            private = Path(config["path"])
            assert seen["argv"] == ["start", "--none", "--log", "stdout", "--config", str(private)]
            assert yaml.safe_load(config["text"]) == {"version": "2", "authtoken": NGROK_TOKEN}
            assert (config["mode"], config["dir_mode"]) == (0o600, 0o700)
            assert private.parent.parent == tmp_path
            # The agent read it at start: the token does not wait on disk while serving.
            assert not private.parent.exists()
            # ngrok serves the host over https too: Twilio gets that, whatever the agent said.
            assert opened.public_url == f"https://{fake_ngrok.PUBLIC_HOST}"
            posted = [r["body"] for r in seen["requests"] if r["method"] == "POST"]
            assert len(posted) == 1
            assert (posted[0].get("upstream") or {}).get("url", posted[0].get("addr")) == (
                "http://127.0.0.1:5001"
            )
        finally:
            opened.close()

    assert gone(seen["pid"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", seen["port"]), timeout=2).close()
    assert [r["method"] for r in agent.record()["requests"]] == ["POST", "DELETE"]
    assert not private.exists() and not private.parent.exists()
    assert NGROK_TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("raw", "token"),
    [
        ("  2fakeTok_9x\r", "2fakeTok_9x"),  # a CRLF env file, a pasted space
        ('"2fakeTok_9x"', "2fakeTok_9x"),  # docker --env-file keeps the quotes
        (" '2fakeTok_9x ' ", "2fakeTok_9x"),
        ("  ", None),  # blank is unset: the agent's own config, not an empty token
    ],
)
def test_the_ngrok_token_reaches_the_agent_without_blanks_or_quotes_around_it(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    raw: str,
    token: str | None,
) -> None:
    agent = fake_agent()
    monkeypatch.setenv("NGROK_AUTHTOKEN", raw)

    opened = ngrok_agent.open_ngrok(5004)
    try:
        config = agent.record()["config"]
        given = None if config is None else yaml.safe_load(config["text"])["authtoken"]
        assert given == token
    finally:
        opened.close()


def test_open_ngrok_without_a_token_leaves_the_agent_its_own_config(
    fake_agent: Callable[..., fake_ngrok.FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = fake_agent()
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)

    opened = ngrok_agent.open_ngrok(5002)
    try:
        seen = agent.record()
        assert seen["argv"] == ["start", "--none", "--log", "stdout"]
        assert (seen["config"], seen["env_token"]) == (None, False)
        assert opened.public_url == f"https://{fake_ngrok.PUBLIC_HOST}"
    finally:
        opened.close()
    assert gone(seen["pid"])


@pytest.mark.parametrize("fail", fake_ngrok.FAILURES)
def test_open_ngrok_failure_leaves_no_agent_and_no_token(
    fake_agent: Callable[..., fake_ngrok.FakeAgent], monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    agent = fake_agent(fail=fail)
    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)

    with pytest.raises(tunnel_types.TunnelError) as info:
        ngrok_agent.open_ngrok(5003)

    message = str(info.value)
    # The code, the first sentence, and what to do about that code in particular.
    reason, fix = {
        # The real agent quotes a refused token back; it must not reach the terminal.
        "auth": (
            "ERR_NGROK_105: authentication failed: The authtoken you specified does not look "
            "like a proper ngrok tunnel authtoken)",
            ngrok_agent.NGROK_CODE_FIXES["105"],
        ),
        "sessions": (
            "ERR_NGROK_108: authentication failed: Your account is limited to 1 simultaneous "
            "ngrok agent sessions)",
            ngrok_agent.NGROK_CODE_FIXES["108"],
        ),
        # One sentence, then the code after CRLFs: no "\\r" of the agent's escapes is left.
        "account": (
            "ERR_NGROK_4018: authentication failed: Usage of ngrok requires a verified account "
            "and authtoken)",
            ngrok_agent.NGROK_CODE_FIXES["4018"],
        ),
        "outdated": (
            'ERR_NGROK_120: authentication failed: Your ngrok agent version "2.3.41" is no '
            "longer supported)",
            ngrok_agent.NGROK_CODE_FIXES["120"],
        ),
        # The agent's reason from its API's answer, not the JSON around it.
        "refuse": (
            f"ERR_NGROK_334: failed to start tunnel: The endpoint 'https://"
            f"{fake_ngrok.PUBLIC_HOST}' is already online)",
            ngrok_agent.NGROK_CODE_FIXES["334"],
        ),
    }[fail]
    assert message.startswith(f"Could not open an ngrok tunnel ({reason}"), message
    assert message.endswith(f"): {fix}") and "\n" not in message
    assert NGROK_TOKEN not in message
    seen = agent.record()
    assert gone(seen["pid"])
    assert not Path(seen["config"]["path"]).parent.exists()


def test_a_refused_token_the_agent_quotes_in_its_log_is_not_shown(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pyngrok logs the agent's error lines at ERROR, shown with `phischer -v`."""
    fake_agent(fail="auth")
    token = "2bRealLooking_Token0123456789abcdef"  # ngrok tokens: letters, digits, _
    monkeypatch.setenv("NGROK_AUTHTOKEN", token)

    with (
        caplog.at_level("DEBUG", logger=ngrok_agent.AGENT_LOG),
        pytest.raises(tunnel_types.TunnelError) as info,
    ):
        ngrok_agent.open_ngrok(5003)

    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Your authtoken: <NGROK_AUTHTOKEN> ERR_NGROK_105" in line
    assert token not in caplog.text and token not in str(info.value)


class _HoldUntilExited(logging.Handler):
    """Holds pyngrok on the agent's first line until the agent has exited (a slow reader)."""

    def __init__(self, agent: fake_ngrok.FakeAgent) -> None:
        super().__init__()
        self.agent = agent
        self.held = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.held:
            return
        self.held = True
        pid = self.agent.record()["pid"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not exited(pid):
            time.sleep(0.01)


def exited(pid: int) -> bool:
    """Whether process PID has exited (a zombie not yet reaped counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_refused_token_is_explained_when_the_agent_exits_before_pyngrok_reads_why(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pyngrok stops reading at the agent's exit: its ERR_NGROK line is read from the pipe."""
    agent = fake_agent(fail="auth")
    token = "2bRealLooking_Token0123456789abcdef"
    monkeypatch.setenv("NGROK_AUTHTOKEN", token)
    slow_reader = _HoldUntilExited(agent)
    agent_log = logging.getLogger(ngrok_agent.AGENT_LOG)
    agent_log.addHandler(slow_reader)
    try:
        with (
            caplog.at_level("DEBUG", logger=ngrok_agent.AGENT_LOG),
            pytest.raises(tunnel_types.TunnelError) as info,
        ):
            ngrok_agent.open_ngrok(5003)
    finally:
        agent_log.removeHandler(slow_reader)

    assert slow_reader.held
    message = str(info.value)
    assert message.startswith("Could not open an ngrok tunnel (ERR_NGROK_105: "), message
    assert message.endswith(ngrok_agent.NGROK_CODE_FIXES["105"]) and "\n" not in message
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Your authtoken: <NGROK_AUTHTOKEN> ERR_NGROK_105" in line
    assert token not in caplog.text and token not in message


@pytest.mark.parametrize("fail", ["auth", "sessions"])
def test_an_agent_refused_at_startup_is_one_line_in_a_real_run(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    tmp_path: Path,
    fail: str,
) -> None:
    """The agent's own logfmt error line (pyngrok relays it at ERROR) was printed above
    phischer's one-line error, which says the same and what to do."""
    fake_agent(fail=fail)
    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the agent's private config file
    with real_up(tmp_path) as (proc, lines):
        code = finish(proc, lines)

    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: Could not open an ngrok tunnel (ERR_NGROK_1"), lines
    assert number["sms_url"] == OLD_URL


def test_closing_stops_the_ngrok_agent_even_when_disconnect_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyngrok import ngrok, process
    from pyngrok.exception import PyngrokNgrokError

    killed: list[bool] = []
    configs: list[Path] = []

    def connect(*args: Any, pyngrok_config: Any) -> _PyngrokTunnel:
        configs.append(Path(pyngrok_config.config_path))
        return _PyngrokTunnel("https://abc.ngrok.io")

    def disconnect(url: str, pyngrok_config: Any) -> None:
        raise PyngrokNgrokError("ngrok client exception, URLError: Connection refused")

    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)
    monkeypatch.setattr(ngrok, "connect", connect)
    monkeypatch.setattr(ngrok, "disconnect", disconnect)
    monkeypatch.setattr(ngrok, "kill", lambda pyngrok_config: killed.append(True))
    # The agent stays up with its tunnel open: that failure is worth the caller's warning.
    monkeypatch.setattr(process, "is_process_running", lambda ngrok_path: True)
    monkeypatch.setattr(ngrok_agent, "AGENT_EXIT_WAIT_S", 0.1)

    opened = ngrok_agent.open_ngrok(5001)
    assert opened.public_url == "https://abc.ngrok.io"
    assert [c.exists() for c in configs] == [False]  # deleted once the agent was up
    with pytest.raises(PyngrokNgrokError):
        opened.close()
    assert killed == [True]
    assert not configs[0].parent.exists()  # and the private token file went with it


def test_closing_after_the_agent_got_the_ctrl_c_too_is_quiet(
    fake_agent: Callable[..., fake_ngrok.FakeAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a terminal reaches the agent too (one process group): no warning for that."""
    agent = fake_agent()
    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)
    opened = ngrok_agent.open_ngrok(5003)
    seen = agent.record()

    os.kill(seen["pid"], signal.SIGINT)
    # Like the real agent it stops its API first and exits a moment later: close() comes
    # in between, when the DELETE of the tunnel finds nobody listening.
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", seen["port"]), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            break  # reset: the API closed while this connection was in its backlog
        assert time.monotonic() < deadline, "the fake agent kept its API open after SIGINT"
        time.sleep(0.01)

    opened.close()  # the tunnel closed with the agent: nothing to report

    assert gone(seen["pid"])
    assert [r["method"] for r in agent.record()["requests"]] == ["POST"]


@pytest.mark.parametrize("kind", ["install", "agent", "unexpected"])
def test_ngrok_failure_is_one_line_with_both_fixes(
    monkeypatch: pytest.MonkeyPatch, number: dict[str, Any], stop: Callable[..., Stop], kind: str
) -> None:
    from pyngrok import ngrok
    from pyngrok.exception import PyngrokNgrokError, PyngrokNgrokInstallError

    def connect(*args: Any, **kwargs: Any) -> None:
        if kind == "install":
            raise PyngrokNgrokInstallError("An error occurred while downloading ngrok from …")
        if kind == "unexpected":  # not a PyngrokError: an agent API answer that is not JSON
            raise json.JSONDecodeError("Expecting value", "<html>", 0)
        raise PyngrokNgrokError(
            "The ngrok process errored on start: authentication failed.",
            ngrok_error="authentication failed: Usage of ngrok requires a verified account "
            "and authtoken.",
        )

    monkeypatch.setattr(ngrok, "connect", connect)
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    first = {
        "install": "Error: No ngrok binary, and it could not be downloaded: ",
        "agent": "Error: Could not open an ngrok tunnel (authentication failed: Usage of ngrok "
        "requires a verified account and authtoken.): ",
        "unexpected": "Error: Could not open an ngrok tunnel (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0)): ",
    }[kind]
    assert result.output == first + ngrok_agent.NGROK_FIXES + "\n"
    assert (
        "NGROK_AUTHTOKEN" in ngrok_agent.NGROK_FIXES and "--public-url" in ngrok_agent.NGROK_FIXES
    )
    assert number["sms_url"] == OLD_URL
    assert not (instance() / "public_url").exists()


def pyngrok_script(directory: Path) -> Path:
    """Write into DIRECTORY what pip installs as pyngrok's `ngrok` command; returns its run marker.

    The real one downloads ngrok when run and, offline, dies with a page of traceback; this one
    dies the same way at once (nothing downloads) and leaves the marker when it ran.
    """
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "pyngrok-script-ran"
    script = directory / "ngrok"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "sys.stderr.write('Traceback (most recent call last):\\n  ...\\n"
        "pyngrok.exception.PyngrokNgrokInstallError: An error occurred while downloading "
        "ngrok\\n')\n"
        "sys.exit(1)\n"
        "from pyngrok.ngrok import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return marker


def test_pyngrok_own_ngrok_command_is_skipped_for_the_agent_further_down_path(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """An active venv puts pyngrok's `ngrok` first on PATH; the real agent comes later."""
    agent = fake_agent()
    marker = pyngrok_script(tmp_path / "venv-bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'venv-bin'}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("ngrok") == str(tmp_path / "venv-bin" / "ngrok")

    assert ngrok_agent.find_ngrok() == str(agent.path)
    opened = ngrok_agent.open_ngrok(5004)
    try:
        assert opened.public_url == f"https://{fake_ngrok.PUBLIC_HOST}"
    finally:
        opened.close()
    assert not marker.exists()
    assert "Traceback" not in capfd.readouterr().err


def test_with_only_pyngrok_own_ngrok_command_on_path_the_error_is_one_line(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    number: dict[str, Any],
    stop: Callable[..., Stop],
    tmp_path: Path,
) -> None:
    """No agent anywhere: pyngrok's own download is tried (and fails offline), not its script."""
    from pyngrok import installer
    from pyngrok.exception import PyngrokNgrokInstallError

    def offline(*args: Any, **kwargs: Any) -> None:
        raise PyngrokNgrokInstallError("An error occurred while downloading ngrok from …")

    monkeypatch.setattr(installer, "install_ngrok", offline)
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(tmp_path / "not-downloaded" / "ngrok"))
    marker = pyngrok_script(tmp_path / "venv-bin")
    monkeypatch.setenv("PATH", str(tmp_path / "venv-bin"))
    stop()
    result = run("tunnel")

    assert (result.exit_code, result.output) == (
        1,
        f"Error: No ngrok binary, and it could not be downloaded: {ngrok_agent.NGROK_FIXES}\n",
    )
    assert not marker.exists()
    assert "Traceback" not in capfd.readouterr().err
    assert number["sms_url"] == OLD_URL


def test_a_malformed_ngrok_config_is_one_line(
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    number: dict[str, Any],
    stop: Callable[..., Stop],
) -> None:
    """pyngrok lets the YAML error of the user's own ngrok.yml through."""
    from pyngrok import conf

    fake_agent()
    config = Path(conf.DEFAULT_NGROK_CONFIG_PATH)
    config.parent.mkdir(parents=True)
    config.write_text("version: 2\nauthtoken: [unclosed\n")
    stop()
    result = run("tunnel")

    assert (result.exit_code, result.output) == (
        1,
        f"Error: Could not open an ngrok tunnel: {config} is not valid YAML (expected ',' or "
        f"']', but got '<stream end>', line 3): fix it, or set NGROK_AUTHTOKEN (phischer then "
        f"gives ngrok a config of its own), or pass --public-url https://… if you have your own "
        f"domain or tunnel\n",
    )
    assert number["sms_url"] == OLD_URL


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("tunnel", ["--port", "--public-url URL", "--no-restore"]),
        ("up", ["--port", "--public-url URL"]),
    ],
)
def test_help_lists_the_design_options(command: str, options: list[str]) -> None:
    """DESIGN §6: `tunnel [--port] [--public-url URL] [--no-restore]`, `up [--port] [--public-url URL]`."""
    result = run(command, "--help")
    assert result.exit_code == 0
    assert [o for o in options if o not in result.output] == []
    assert ("--no-restore" in result.output) == (command == "tunnel")


def test_script_wrapper_runs_the_same_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWILIO_")}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "tunnel.py"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    # `tunnel` points at a server already listening: port 0 (any free port) names none.
    zero = script("--port", "0")
    assert zero.returncode == 2
    assert zero.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '--port': 0 is not in the range 1<=x<=65535."
    )
    result = script("--port", "5001")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: TWILIO_ACCOUNT_SID is not set: add the Account SID (AC…) from "
        "console.twilio.com → Account info to .env"
    ]
    shown = script("-h")
    assert shown.returncode == 0
    assert shown.stdout.startswith("Usage: scripts/tunnel.py [OPTIONS]")
    assert "--public-url URL" in shown.stdout and "--no-restore" in shown.stdout
    # -v as for `phischer -v`: debug logging, and the same one-line error (not "no such option").
    verbose = script("-v", "--port", "5001")
    assert verbose.returncode == 1
    assert verbose.stderr.strip().splitlines()[-1] == result.stderr.strip()


def test_the_script_wrappers_error_lines_show_no_secret(
    fake_twilio: FakeTwilio, number: dict[str, Any], twilio_env: None, tmp_path: Path
) -> None:
    # Its errors do not pass the `phischer` group, which hides what a server quotes back.
    token = fake_twilio.auth_token
    fake_twilio.fail_next(
        "POST", f"/IncomingPhoneNumbers/{number['sid']}.json", 400, 21211, f"bad key {token}"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tunnel.py"), "--public-url", "https://x.test"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith("bad key <TWILIO_AUTH_TOKEN>)")
    assert token not in done.stdout + done.stderr


# -- the Twilio client factory and the fake ------------------------------------------------


def test_client_factory_sets_timeout_and_base_url(fake_twilio: FakeTwilio) -> None:
    settings = fake_settings(fake_twilio)
    client = make_twilio_client(settings)
    assert isinstance(client.http_client, RebasingHttpClient)
    assert client.http_client.timeout == TWILIO_HTTP_TIMEOUT_S
    assert client.api.base_url == fake_twilio.url

    real = make_twilio_client(settings.with_overrides(twilio_api_base_url=None))
    assert not isinstance(real.http_client, RebasingHttpClient)
    assert real.http_client.timeout == TWILIO_HTTP_TIMEOUT_S
    assert real.api.base_url == "https://api.twilio.com"


def test_a_restore_twilio_does_not_answer_gives_up_at_its_deadline(
    fake_twilio: FakeTwilio, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request used to wait the whole TWILIO_HTTP_TIMEOUT_S (10 s) for an answer, so a
    # hanging Twilio held a stop twice as long as the restore's budget, or more.
    monkeypatch.setattr(webhook_registration, "RETRY_BUDGET_S", 0.1)
    number = fake_twilio.add_number(PHONE, sms_url="https://t.ngrok-free.app/sms")
    answer = threading.Event()
    fake_twilio.after_next("GET", f"/{number['sid']}.json", lambda: answer.wait(10))
    # Answered well before the 10 s timeout, but after the 0.1 s budget (and the one second
    # a request sent past it still gets).
    release = threading.Timer(LAST_REQUEST_S + 2, answer.set)
    release.start()
    registration = webhook_registration.Registration(
        number["sid"], PHONE, "https://t.ngrok-free.app/sms", OLD_URL, "GET"
    )
    try:
        with pytest.raises(tunnel_types.TunnelError, match=r"\(ReadTimeout\)"):
            webhook_registration.restore_webhook(
                make_twilio_client(fake_settings(fake_twilio)), registration, tmp_path
            )
    finally:
        answer.set()
        release.cancel()
    assert number["sms_url"] == "https://t.ngrok-free.app/sms"  # not put back: not reached


def test_client_factory_error_is_a_value_error_naming_the_variable() -> None:
    with pytest.raises(TwilioConfigError, match=r"^TWILIO_AUTH_TOKEN is not set: ") as info:
        make_twilio_client(
            Settings.from_env({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_PHONE_NUMBER": PHONE})
        )
    assert isinstance(info.value, ValueError)


def test_fake_sends_messages_and_scripted_failures(fake_twilio: FakeTwilio) -> None:
    settings = fake_settings(fake_twilio)
    client = make_twilio_client(settings)
    sent = client.messages.create(to="+15550100", from_=PHONE, body="hello")
    assert sent.sid.startswith("SM") and sent.status == "queued"
    fake_twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(to="+15550100", from_=PHONE, body="again")
    assert (info.value.status, info.value.code) == (400, 21610)
    assert [m["body"] for m in fake_twilio.messages] == ["hello"]
    assert [r.form["Body"] for r in fake_twilio.calls("POST", "/Messages.json")] == [
        "hello",
        "again",
    ]


@contextmanager
def real_up(
    cwd: Path, *args: str, group: bool = False
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`phischer up --port 0 ARGS` as a user runs it; yields the process and its output lines.

    `group`: in a process group of its own, as a terminal's foreground job (Ctrl-C is a
    SIGINT to the whole group: `up` and the ngrok agent it started).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "phischer", "up", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=group,
    )
    watchdog = threading.Timer(60, proc.kill)  # a hang fails the test instead of the suite
    watchdog.start()
    try:
        yield proc, []
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def read_until(proc: subprocess.Popen[str], lines: list[str], prefix: str) -> None:
    """Read the process's output into `lines` up to the line starting with `prefix`."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting {prefix!r}:\n" + "\n".join(lines))


def finish(proc: subprocess.Popen[str], lines: list[str]) -> int:
    """Wait for the process to exit; its remaining output goes to `lines`; its exit code."""
    rest, _ = proc.communicate(timeout=30)
    lines += rest.splitlines()
    return proc.returncode


@pytest.mark.parametrize("when", ["find", "check", "update", "serving"])
def test_up_in_a_real_process_stops_cleanly_on_sigterm_at_any_point(
    fake_twilio: FakeTwilio, number: dict[str, Any], tmp_path: Path, when: str
) -> None:
    """SIGTERM (a supervisor, `kill`) while `up` looks the number up, checks its Messaging
    Services (public URL written), changes it, or serves: always a clean stop that restores."""
    procs: list[subprocess.Popen[str]] = []

    def terminate() -> None:
        procs[0].send_signal(signal.SIGTERM)

    # The fake sends it while `up` waits for Twilio's answer: no timing guesses.
    hook = {
        "find": ("GET", "/IncomingPhoneNumbers.json"),
        "check": ("GET", "/v1/Services"),
        "update": ("POST", f"/IncomingPhoneNumbers/{number['sid']}.json"),
    }.get(when)
    if hook is not None:
        fake_twilio.after_next(*hook, terminate)
    with real_up(tmp_path, "--public-url", TUNNEL_URL) as (proc, lines):
        procs.append(proc)
        if when == "serving":
            read_until(proc, lines, "Ctrl-C to stop")
            assert number["sms_url"] == f"{TUNNEL_URL}/sms", lines
            assert (instance() / "public_url").read_text().strip() == TUNNEL_URL
            proc.send_signal(signal.SIGTERM)
        code = finish(proc, lines)

    output = "\n".join(lines)
    changed = when in ("update", "serving")
    # Stopped before the "Ctrl-C to stop" line: everything undone, then "Aborted!" (README).
    if when == "serving":
        assert code == 0 and "Shutting down…" in lines, output
    else:
        assert (code, lines[-1]) == (1, "Aborted!"), output
        assert "Ctrl-C to stop" not in output and "Shutting down…" not in lines
    assert len(updates(fake_twilio, number)) == (2 if changed else 0), output
    assert (f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines) == changed, output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert not (instance() / "public_url").exists()
    assert not (instance() / webhook_registration.STATE_FILE).exists()
    assert "Traceback" not in output and "Exception ignored" not in output


def test_up_in_a_real_process_exits_1_when_the_restore_fails_on_sigterm(
    fake_twilio: FakeTwilio, number: dict[str, Any], tmp_path: Path
) -> None:
    """A supervisor's SIGTERM, Twilio down for the restore: all closed, one line, exit 1."""
    public = "https://sms.example.com"
    with real_up(tmp_path, "--public-url", public) as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        local = next(line for line in lines if line.startswith("Serving")).split()[1]
        fake_twilio.fail_next(
            "POST",
            f"/IncomingPhoneNumbers/{number['sid']}.json",
            503,
            20503,
            "Unavailable",
            times=RESTORE_TRIES,
        )
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, lines)

    output = "\n".join(lines)
    assert code == 1, output
    assert lines[-2:] == [
        "Shutting down…",
        f"Error: Twilio refused to restore the SMS URL of {PHONE} (HTTP 503, error 20503: "
        f"Unable to update record: Unavailable): set it back to {OLD_URL} (GET) in the Twilio "
        f"console (Phone Numbers → Active numbers → {PHONE}), or run `phischer tunnel` again: "
        f"it repairs it",
    ], output
    assert "Traceback" not in output
    assert number["sms_url"] == f"{public}/sms"
    assert not (instance() / "public_url").exists()
    assert (instance() / webhook_registration.STATE_FILE).exists()  # the next run restores from it
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{local}/healthz", timeout=2)


def test_up_logs_a_requests_path_never_its_query(
    fake_twilio: FakeTwilio, number: dict[str, Any], tmp_path: Path
) -> None:
    """A text sent by GET (the number's SMS URL set to HTTP GET): its number and words stay out."""
    query = "From=%2B44+7911+123456&Body=my+pin+is+4242&To=%2B15550001111"
    with real_up(tmp_path, "--public-url", "https://sms.example.com") as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        local = next(line for line in lines if line.startswith("Serving")).split()[1]
        assert requests.get(f"{local}/sms?{query}", timeout=10).status_code == 405
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, lines) == 0

    output = "\n".join(lines)
    assert "GET /sms?… HTTP/1.1" in output, output
    assert "7911" not in output and "pin" not in output


# `phischer serve` stops this soon too (test_serve_stop); `up` waited for the model's minute.
STOPPED_WITHIN_S = 10


def test_ctrl_c_stops_up_at_once_with_a_slow_reply_in_progress(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    fake_openai: Any,
    personas: Any,
    database: Any,
) -> None:
    """Ctrl-C with a slow model answering a text: `up` stops within seconds, not a minute;
    the number is restored, the tunnel closed, and the text left to the recovery sweep."""
    import sqlalchemy as sa

    from phischer.models import Message
    from tests.conftest import set_model

    agent = fake_agent()
    monkeypatch.setenv("NGROK_AUTHTOKEN", NGROK_TOKEN)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the agent's private config file
    monkeypatch.setenv("REPLY_MODE", "async")  # the reply's model call runs in the background
    fake_openai.behaviour, fake_openai.delay = "slow", 60.0
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    public = f"https://{fake_ngrok.PUBLIC_HOST}"

    with real_up(tmp_path, group=True) as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        assert number["sms_url"] == f"{public}/sms", lines
        local = next(line for line in lines if line.startswith("Serving")).split()[1]
        port = int(local.rsplit(":", 1)[1])
        posted = post_sms(port, f"{public}/sms")
        assert posted.status_code == 200 and twiml_bodies(posted.content) == []
        deadline = time.monotonic() + 30
        while not fake_openai.calls("POST", "/v1/chat/completions"):  # the model is at work
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.05)

        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: `up` and its ngrok agent
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOPPED_WITHIN_S)
        took = time.monotonic() - started
        stopped = proc.poll() is not None
        if not stopped:
            os.killpg(proc.pid, signal.SIGKILL)
        code = finish(proc, lines)

    output = "\n".join(lines)
    assert stopped, f"still running {took:.0f} s after Ctrl-C:\n{output}"
    assert code == 0, output
    assert "Shutting down…" in lines, output
    assert "0 webhook requests and 1 slow reply unfinished" in output
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines, output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert gone(agent.record()["pid"])  # the tunnel closed with its agent
    assert not (instance() / "public_url").exists()
    assert "Traceback" not in output and "Warning" not in output, output
    # The text stays stored, "processing": the recovery sweep answers it at the next start.
    with database.read() as session:
        texts = session.scalars(sa.select(Message).where(Message.direction == "in")).all()
    assert [(m.body, m.status) for m in texts] == [("hey how are you", "processing")]
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_second_run_from_the_same_folder_is_refused_while_the_first_lives(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    tmp_path: Path,
    refused: Callable[..., str],
    run_live: Callable[..., Any],
) -> None:
    """Both would share the folder's record of the original URL: the second must not start."""
    first = "https://walk.example.test"
    with real_up(tmp_path, "--public-url", first) as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        state = (instance() / webhook_registration.STATE_FILE).read_text()
        assert record_of(number)["pid"] == proc.pid
        seen = len(fake_twilio.requests)
        busy = (
            f"Error: another `phischer up` (pid {proc.pid}) serves this number from this "
            f"folder ({instance()}): stop it first\n"
        )

        assert refused("up", "--port", "0", "--public-url", "https://walk2.example.test") == busy
        assert refused("tunnel") == busy
        # Nothing touched: no Twilio call, the number, the record and the public URL as they were.
        assert len(fake_twilio.requests) == seen
        assert number["sms_url"] == f"{first}/sms"
        assert (instance() / webhook_registration.STATE_FILE).read_text() == state
        assert (instance() / "public_url").read_text().strip() == first

        proc.send_signal(signal.SIGTERM)
        assert finish(proc, lines) == 0, lines
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines
    assert not (instance() / webhook_registration.STATE_FILE).exists()

    run_live("tunnel")  # the first is gone: its lock went with it
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")


def test_the_record_of_a_run_killed_with_sigkill_is_restored_by_the_next(
    fake_twilio: FakeTwilio, number: dict[str, Any], tmp_path: Path, run_live: Callable[..., Any]
) -> None:
    with real_up(tmp_path, "--public-url", "https://walk.example.test") as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        proc.kill()  # kill -9: no clean-up at all
        proc.wait(timeout=30)
    state = record_of(number)
    assert (state["pid"], state["previous_url"]) == (proc.pid, OLD_URL)
    assert number["sms_url"] == "https://walk.example.test/sms"

    result = run_live("tunnel")  # not refused: the kernel released the dead run's lock

    # Said at the start, before anything opens: the run knows the number was left on a dead URL.
    assert result.output.splitlines()[0] == (
        f"A run from this folder that was killed left {PHONE} on https://walk.example.test/sms: "
        f"this run puts back {OLD_URL} (GET), its SMS URL before that run, when it stops."
    )
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in result.output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_up_in_a_real_process_restores_through_a_moment_of_twilio_errors_on_sigterm(
    fake_twilio: FakeTwilio, number: dict[str, Any], tmp_path: Path
) -> None:
    """Twilio busy, then failing, as the supervisor stops `up`: restored all the same, exit 0."""
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    with real_up(tmp_path, "--public-url", "https://sms.example.com") as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        fake_twilio.fail_next("POST", path, 429, 20429, "Too Many Requests", retry_after=1)
        fake_twilio.fail_next("POST", path, 500, 20500, "Internal Server Error")
        proc.send_signal(signal.SIGTERM)
        code = finish(proc, lines)

    output = "\n".join(lines)
    assert code == 0, output
    assert lines[-1] == f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET).", output
    assert "Traceback" not in output and "Warning" not in output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert len(fake_twilio.calls("POST", path)) == 4  # registered, then three tries
    assert not (instance() / webhook_registration.STATE_FILE).exists()


# -- a number a killed run left, when TWILIO_PHONE_NUMBER has changed since ------------------

OTHER = "+15550002222"
OTHER_OLD = "https://other-old.example.com/sms"
KILLED_URL = "https://walk.example.test/sms"


def killed_run_left(fake: FakeTwilio, now: str = KILLED_URL, **number: Any) -> dict[str, Any]:
    """Number OTHER, which a run killed here pointed at KILLED_URL (its record kept), now at `now`."""
    other = fake.add_number(OTHER, sms_url=now, sms_method="POST", **number)
    record_left(other, OTHER_OLD)
    return other


def record_left(number: dict[str, Any], previous_url: str) -> None:
    """The state file as a run killed here left it, having moved `number` to KILLED_URL."""
    record = {
        "number_sid": number["sid"],
        "phone_number": number["phone_number"],
        "sms_url": KILLED_URL,
        "previous_url": previous_url,
        "previous_method": "GET",
        "pid": 2**22 + 1,  # above any pid_max: that run is gone
    }
    instance().mkdir(parents=True, exist_ok=True)
    (instance() / webhook_registration.STATE_FILE).write_text(json.dumps({number["sid"]: record}))


def no_tunnel(port: int) -> tunnel_types.Tunnel:
    """An opener whose agent is refused, as when the killed run's agent still holds the session."""
    raise tunnel_types.TunnelError("Could not open an ngrok tunnel (ERR_NGROK_108: …): stop it")


@pytest.mark.parametrize("how", ["no-tunnel", "refused", "ctrl-c"])
def test_a_run_that_stops_before_taking_over_a_killed_runs_number_restores_it(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[..., Stop],
    how: str,
) -> None:
    """kill -9, then a run that fails or is stopped before it registers: the number is put back
    as the killed run would have, not left on its dead URL until some later run."""
    number["sms_url"], number["sms_method"] = KILLED_URL, "POST"
    record_left(number, OLD_URL)
    path = f"/IncomingPhoneNumbers/{number['sid']}.json"
    main = threading.main_thread().ident
    assert main is not None
    monkeypatch.setattr(ngrok_agent, "open_ngrok", no_tunnel if how == "no-tunnel" else FakeNgrok())
    if how == "refused":
        fake_twilio.fail_next("POST", path, 400, 21502, "Invalid SmsUrl")
    elif how == "ctrl-c":  # while Messaging Services are checked, before the change
        fake_twilio.after_next(
            "GET", "/v1/Services", lambda: signal.pthread_kill(main, signal.SIGINT)
        )
    stop()
    result = run("tunnel")

    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line]
    assert lines[0] == (
        f"A run from this folder that was killed left {PHONE} on {KILLED_URL}: this run puts "
        f"back {OLD_URL} (GET), its SMS URL before that run, when it stops."
    )
    assert lines[-2] == (
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET), which a run from this folder "
        f"that was killed had left on {KILLED_URL}."
    ), result.output
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_no_restore_run_that_stops_before_taking_over_leaves_the_number_as_it_says(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    stop: Callable[..., Stop],
) -> None:
    """--no-restore says it does not put back the killed run's URL: it does not, even when it
    stops before taking the number over."""
    number["sms_url"], number["sms_method"] = KILLED_URL, "POST"
    record_left(number, OLD_URL)
    monkeypatch.setattr(ngrok_agent, "open_ngrok", no_tunnel)
    stop()
    result = run("tunnel", "--no-restore")

    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line]
    assert lines[0] == (
        f"A run from this folder that was killed left {PHONE} on {KILLED_URL}: its SMS URL "
        f"before that run was {OLD_URL} (GET), which --no-restore does not put back."
    )
    assert not any(line.startswith("Restored") for line in lines), result.output
    assert (number["sms_url"], number["sms_method"]) == (KILLED_URL, "POST")
    assert (instance() / webhook_registration.STATE_FILE).exists()  # for a run that restores


def test_a_number_a_killed_run_left_is_restored_by_a_run_for_another_number(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    tmp_path: Path,
    run_live: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kill -9, then TWILIO_PHONE_NUMBER changed: the first number is not left on a dead URL."""
    other = fake_twilio.add_number(OTHER, sms_url=OTHER_OLD)
    with real_up(tmp_path, "--public-url", "https://walk.example.test") as (proc, lines):
        read_until(proc, lines, "Ctrl-C to stop")
        proc.kill()  # kill -9: no clean-up at all
        proc.wait(timeout=30)
    assert number["sms_url"] == KILLED_URL

    monkeypatch.setenv("TWILIO_PHONE_NUMBER", OTHER)
    result = run_live("tunnel")

    assert result.output.splitlines()[0] == (
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET), which a run from this folder "
        f"that was killed had left on {KILLED_URL}."
    )
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")
    # The run's own number was registered and put back as usual.
    assert [u["SmsUrl"] for u in updates(fake_twilio, other)] == [f"{TUNNEL_URL}/sms", OTHER_OLD]
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_left_number_someone_changed_since_is_left_as_is_and_its_old_url_said(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    other = killed_run_left(fake_twilio, now="https://someone.example/sms")
    result = run_live("tunnel")

    assert warnings(result.output)[0] == (
        f"Warning: a run from this folder that was killed left {OTHER} on {KILLED_URL}; it was "
        f"changed to 'https://someone.example/sms' since, so phischer leaves it: to give it the URL "
        f"it had before that run, set it back to {OTHER_OLD} (GET) in the Twilio console (Phone "
        f"Numbers → Active numbers → {OTHER})"
    )
    assert updates(fake_twilio, other) == []
    assert not (instance() / webhook_registration.STATE_FILE).exists()  # said: nothing to keep


def test_a_left_number_twilio_will_not_restore_keeps_its_record_for_the_next_run(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    other = killed_run_left(fake_twilio)
    path = f"/IncomingPhoneNumbers/{other['sid']}.json"
    fake_twilio.fail_next("POST", path, 503, 20503, "Unavailable", times=RESTORE_TRIES)
    result = run_live("tunnel")

    assert warnings(result.output)[0] == (
        f"Warning: a run from this folder that was killed left {OTHER} on {KILLED_URL}; Twilio "
        f"refused to restore the SMS URL of {OTHER} (HTTP 503, error 20503: Unable to update "
        f"record: Unavailable): set it back to {OTHER_OLD} (GET) in the Twilio console (Phone "
        f"Numbers → Active numbers → {OTHER}), or run `phischer tunnel` again: it repairs it"
    )
    assert other["sms_url"] == KILLED_URL
    assert (number["sms_url"], number["sms_method"]) == (OLD_URL, "GET")  # this run's, as usual
    assert record_of(other)["previous_url"] == OTHER_OLD

    again = run_live("tunnel")
    assert f"Restored the SMS URL of {OTHER} to {OTHER_OLD} (GET)" in again.output
    assert (other["sms_url"], other["sms_method"]) == (OTHER_OLD, "GET")
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_left_number_no_longer_on_the_account_is_said_once(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    other = killed_run_left(fake_twilio)
    fake_twilio.numbers.remove(other)  # released since
    result = run_live("tunnel")

    line = warnings(result.output)[0]
    assert line.startswith(
        f"Warning: a run from this folder that was killed left {OTHER} on {KILLED_URL}; Twilio "
        f"refused to read the SMS URL of {OTHER} (HTTP 404, "
    )
    assert line.endswith(
        f"set it back to {OTHER_OLD} (GET) in the Twilio console (Phone "
        f"Numbers → Active numbers → {OTHER})"
    )
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_left_number_the_killed_run_never_changed_is_dropped_quietly(
    fake_twilio: FakeTwilio, number: dict[str, Any], run_live: Callable[..., Any]
) -> None:
    """Killed while Twilio applied its change, which never landed: nothing to say or undo."""
    other = killed_run_left(fake_twilio, now=OTHER_OLD)
    result = run_live("tunnel")

    assert OTHER not in result.output
    assert updates(fake_twilio, other) == []
    assert not (instance() / webhook_registration.STATE_FILE).exists()


def test_a_left_number_is_only_said_where_the_folder_cannot_be_locked(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    run_live: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the lock, the record may be a live run's (another number, this folder)."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    other = killed_run_left(fake_twilio)
    result = run_live("tunnel")

    assert warnings(result.output)[0] == (
        f"Warning: a run from this folder that was killed left {OTHER} on {KILLED_URL}; this "
        f"folder cannot be locked, so that run may still be live, and phischer leaves it: to give "
        f"it the URL it had before that run, set it back to {OTHER_OLD} (GET) in the Twilio console (Phone "
        f"Numbers → Active numbers → {OTHER})"
    )
    assert updates(fake_twilio, other) == []
    assert record_of(other)["previous_url"] == OTHER_OLD


def test_twilio_unreachable_is_one_line(
    monkeypatch: pytest.MonkeyPatch, refused: Callable[..., str]
) -> None:
    monkeypatch.setenv("TWILIO_API_BASE_URL", "http://127.0.0.1:9")

    assert refused("tunnel") == (
        "Error: Could not reach Twilio to list your phone numbers (ConnectionError): "
        "check your network\n"
    )


def test_twilio_request_dumps_stay_at_debug(
    fake_twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    """twilio logs numbers and bodies of every request at INFO; they are personal data."""
    settings = fake_settings(fake_twilio)
    client = make_twilio_client(settings)
    with caplog.at_level("INFO"):
        client.messages.create(to="+15550100", from_=PHONE, body="secret words")
    assert not [r for r in caplog.records if r.name.startswith("twilio")]
    with caplog.at_level("DEBUG"):
        client.messages.create(to="+15550100", from_=PHONE, body="secret words")
    assert any(r.name == "twilio.http_client" for r in caplog.records)


@pytest.mark.parametrize(
    ("before", "warned"),
    [
        ("https://f00d.ngrok-free.app/sms", True),  # another run's tunnel, live or dead
        ("https://x1.eu.ngrok.io/sms", True),
        ("https://ngrok-free.app.example.com/sms", False),  # only a look-alike name
        ("https://hooks.example.com/in", False),
        ("", False),
    ],
)
def test_tunnel_warns_when_the_number_pointed_at_another_ngrok_tunnel(
    fake_twilio: FakeTwilio,
    run_live: Callable[..., Any],
    serving: int,
    before: str,
    warned: bool,
) -> None:
    number = fake_twilio.add_number(PHONE, sms_url=before)
    result = run_live("tunnel", "--port", str(serving))

    expected = (
        f"Warning: {PHONE} pointed at {before}, an ngrok tunnel: if another `phischer up` or "
        f"`phischer tunnel` serves it, it gets no texts while this run lasts; if it is left "
        f"from an earlier run, it is dead, and so is what this run puts back when it stops"
    )
    assert warnings(result.output) == ([expected] if warned else [])
    # Registered, then put back as it was, warning or not.
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", before]


def test_up_answers_texts_a_crash_left_at_once(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    run_live: Callable[..., Any],
    personas: Any,
    make_app: Callable[..., Any],
) -> None:
    from tests.test_recovery import interrupted, stored

    app = make_app(
        twilio_account_sid=fake_twilio.account_sid,
        twilio_auth_token=fake_twilio.auth_token,
        twilio_phone_number=PHONE,
        twilio_api_base_url=fake_twilio.url,
    )
    inbound_id = interrupted(app, "good night", "SMleft", dt.timedelta(minutes=5))
    app.extensions["phischer"].sms.shutdown()
    sent: list[tuple[str, str]] = []

    def check(exposure: tunnel.Exposure) -> None:
        deadline = time.monotonic() + 20
        while not fake_twilio.calls("POST", "/Messages.json") and time.monotonic() < deadline:
            time.sleep(0.05)
        sent.extend(
            (c.form["To"], c.form["Body"]) for c in fake_twilio.calls("POST", "/Messages.json")
        )

    run_live("up", "--port", "0", check=check)

    assert sent == [("+15550100", "Sleep well, dear. Dream of engines.")]
    assert [(m.id, m.status) for m in stored(app)][0] == (inbound_id, "replied")


@pytest.mark.parametrize("command", ["tunnel", "up"])
def test_a_number_left_on_this_tunnels_own_address_is_said_to_stay_dead(
    fake_twilio: FakeTwilio, run_live: Callable[..., Any], serving: int, command: str
) -> None:
    # ngrok gives a free account one address for every run: an earlier `--no-restore` run
    # left the number on the very URL this run opens. Putting it "back" leaves it on a
    # closed tunnel, which must not read as a restore.
    number = fake_twilio.add_number(PHONE, sms_url=f"{TUNNEL_URL}/sms")
    port = str(serving) if command == "tunnel" else "0"
    result = run_live(command, "--port", port)

    assert warnings(result.output) == [
        f"Warning: {PHONE} already pointed at {TUNNEL_URL}/sms, this tunnel's address, left by "
        f"an earlier run (--no-restore, or one that never restored): it stays there when this "
        f"run stops",
        f"Warning: the SMS URL of {PHONE} stays {TUNNEL_URL}/sms, as before this run, which "
        f"stops working as the tunnel closes: texts fail (Twilio error 11200) until you point "
        f"the number elsewhere in the Twilio console or run `phischer up` or `tunnel` again",
    ]
    assert "Restored" not in result.output
    assert number["sms_url"] == f"{TUNNEL_URL}/sms"


def test_a_public_url_the_number_already_had_is_restored_without_a_warning(
    fake_twilio: FakeTwilio, run_live: Callable[..., Any], serving: int
) -> None:
    # Your own domain outlives the run: the number on it before and after is as it should be.
    fake_twilio.add_number(PHONE, sms_url="https://sms.example.org/sms")
    result = run_live("tunnel", "--public-url", "https://sms.example.org", "--port", str(serving))

    assert warnings(result.output) == []
    assert result.output.splitlines()[-1] == (
        f"Restored the SMS URL of {PHONE} to https://sms.example.org/sms (POST)."
    )


# -- while serving: the server and the tunnel are watched ------------------------------------


def registration_then(fake: FakeTwilio, number: dict[str, Any], then: Callable[[], None]) -> None:
    """Call `then()` once Twilio has applied the registration (the run is about to serve)."""
    fake.after_next("POST", f"/IncomingPhoneNumbers/{number['sid']}.json", then)


def run_until_it_stops(*args: str) -> Any:
    """Run a command with the real wait: it must stop by itself, well before the watchdog."""
    started = time.monotonic()
    with watchdog(20) as fired:
        result = run(*args)
    assert not fired, "the run went on serving: nothing noticed what stopped"
    assert time.monotonic() - started < 15
    return result


def test_up_stops_and_restores_when_the_ngrok_agent_dies(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    personas: Any,
) -> None:
    agent = fake_agent()
    registration_then(fake_twilio, number, lambda: os.kill(agent.record()["pid"], signal.SIGKILL))

    result = run_until_it_stops("up", "--port", "0")

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[-1] == (
        "Error: The ngrok agent stopped, closing the tunnel Twilio posts to, so the run stopped "
        "too: start it again (phischer opens no new tunnel by itself)"
    )
    # Stopped as on Ctrl-C: the number is back on its old URL, the shared URL file gone.
    assert "Shutting down…" in lines
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [
        f"https://{fake_ngrok.PUBLIC_HOST}/sms",
        OLD_URL,
    ]
    assert not (instance() / "public_url").exists()
    assert warnings(result.output) == []


def test_tunnel_stops_when_ngrok_refuses_the_agent_its_session_back(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    fake_agent: Callable[..., fake_ngrok.FakeAgent],
    serving: int,
) -> None:
    """ERR_NGROK_108: the agent lives on, retrying, but its tunnel is gone for good."""
    agent = fake_agent()
    registration_then(
        fake_twilio, number, lambda: os.kill(agent.record()["pid"], fake_ngrok.LOSE_SESSION)
    )

    result = run_until_it_stops("tunnel", "--port", str(serving))

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[-1] == (
        "Error: ngrok closed this run's tunnel (ERR_NGROK_108: authentication failed: Your "
        "account is limited to 1 simultaneous ngrok agent sessions), so the run stopped: "
        f"{ngrok_agent.NGROK_CODE_FIXES['108']}"
    )
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines
    assert number["sms_url"] == OLD_URL
    # The agent that stayed up is stopped with the run.
    assert gone(agent.record()["pid"])


def test_a_session_the_agent_gets_back_by_itself_is_no_reason_to_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A network error is retried by the agent and heals; the tunnel keeps its URL."""
    from pyngrok.log import NgrokLog

    session = ngrok_agent._AgentSession("ngrok")
    lost = [  # the real agent's lines (ngrok 3) for a dropped Wi-Fi, then its recovery
        't=2024-10-31T17:34:53-0400 lvl=eror msg="session closed, starting reconnect loop" '
        'obj=tunnels.session err="read EOF from remote peer"',
        't=2024-10-31T17:34:54-0400 lvl=eror msg="failed to reconnect session" '
        'obj=tunnels.session err="failed to dial ngrok server with address '
        '\\"connect.ngrok-agent.com:443\\": dial tcp: i/o timeout"',
    ]
    session.saw(NgrokLog('lvl=info msg="client session established" obj=csess id=1c907e548f56'))
    with caplog.at_level("INFO", logger="phischer.ngrok_agent"):
        for line in lost + lost[1:]:  # the agent says each retry; phischer, the drop once
            session.saw(NgrokLog(line))
        assert session.check(running=True) is None
        said = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert said == [
            (
                "WARNING",
                "The ngrok agent lost its connection to ngrok (read EOF from remote peer): texts "
                "fail with Twilio error 11200 until it is back (it reconnects by itself)",
            )
        ]
        session.saw(NgrokLog('lvl=info msg="tunnel session started" obj=tunnels.session'))
        session.saw(NgrokLog('lvl=info msg="client session established" obj=csess id=1c9'))
        assert [r.getMessage() for r in caplog.records][1:] == [
            "The ngrok agent is connected again: texts reach this run again"
        ]

    refused = (
        't=2023-11-18T09:56:08-0600 lvl=eror msg="failed to reconnect session" '
        "obj=tunnels.session err=\"The tunnel 'tcp://0.tcp.ngrok.io:18899' is already bound to "
        'another tunnel session\\r\\n\\r\\nERR_NGROK_334\\r\\n"'
    )
    session.saw(NgrokLog(refused))
    assert session.check(running=True) == (
        "ngrok closed this run's tunnel (ERR_NGROK_334: The tunnel 'tcp://0.tcp.ngrok.io:18899' "
        "is already bound to another tunnel session), so the run stopped: "
        f"{ngrok_agent.NGROK_CODE_FIXES['334']}"
    )
    # The refusal can pass (the other agent stopped): the agent is back on its own.
    session.saw(NgrokLog('lvl=info msg="client session established" obj=csess id=1c907e548f56'))
    assert session.check(running=True) is None


def listening_on(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:PORT, standing in for `phischer serve`."""
    sock = socket.socket()
    # The port a closed one left behind is taken again at once, as a restarted server does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    return sock


def server_down(port: int) -> str:
    """What `tunnel` says when the server it exposes stops answering."""
    return (
        f"Warning: the server on 127.0.0.1:{port} stopped answering: texts now fail with Twilio "
        f"error 11200. Start it again with `phischer serve --port {port}` in another terminal; "
        f"this tunnel stays open."
    )


@pytest.mark.parametrize("at_start", [True, False], ids=["dies-and-returns", "starts-late"])
def test_tunnel_says_once_when_its_server_stops_answering_and_once_when_it_is_back(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    at_start: bool,
) -> None:
    """The real wait and a real port: each change is said once, and the run goes on until Ctrl-C."""
    monkeypatch.setattr(tunnel, "SERVER_POLL_S", 0.1)  # a look at every turn of the wait
    port = free_port()
    servers = [listening_on(port)] if at_start else []
    back = f"Server found on 127.0.0.1:{port}: texts reach it now."
    main = threading.main_thread().ident
    assert main is not None
    lines: list[str] = []

    def later(action: Callable[[], object]) -> None:
        # Left as it is for a few looks (the wait turns twice a second): still one line.
        threading.Timer(1.2, action).start()

    def echo(line: str) -> None:
        lines.append(line)
        if line == tunnel.STOP_HINT:
            if servers:
                servers[-1].close()  # the server dies while the tunnel serves it
            else:
                later(lambda: servers.append(listening_on(port)))
        elif line == server_down(port):
            later(lambda: servers.append(listening_on(port)))
        elif line == back:
            later(lambda: signal.pthread_kill(main, signal.SIGINT))  # Ctrl-C

    opener = FakeNgrok()
    try:
        with watchdog(10) as barked:
            tunnel.run_tunnel(Settings.from_env(), port=port, opener=opener, echo=echo)
    finally:
        for server in servers:
            server.close()

    assert not barked, lines
    waiting = lines.index(tunnel.STOP_HINT)
    said = [server_down(port), back] if at_start else [back]
    assert lines[waiting + 1 :] == [
        *said,
        "Shutting down…",
        f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET).",
    ]
    # Nothing stopped while the server was away: still registered, the tunnel still open.
    assert [u["SmsUrl"] for u in updates(fake_twilio, number)] == [f"{TUNNEL_URL}/sms", OLD_URL]
    assert opener.closed == 1


def test_up_stops_and_restores_when_its_web_server_dies(
    fake_twilio: FakeTwilio,
    number: dict[str, Any],
    ngrok: FakeNgrok,
    personas: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from werkzeug.serving import ThreadedWSGIServer

    # A fault inside the server's own loop, which ends serve_forever (a request's error
    # would not: each has a thread of its own).
    armed = threading.Event()

    def service_actions(self: Any) -> None:
        if armed.is_set():
            raise OSError(24, "Too many open files")

    monkeypatch.setattr(ThreadedWSGIServer, "service_actions", service_actions)
    registration_then(fake_twilio, number, armed.set)

    result = run_until_it_stops("up", "--port", "0")

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[-1] == (
        "Error: The web server of this run stopped (OSError: [Errno 24] Too many open files), "
        "so the run stopped too: start it again (`phischer -v up` logs the error in full)"
    )
    assert f"Restored the SMS URL of {PHONE} to {OLD_URL} (GET)." in lines
    assert number["sms_url"] == OLD_URL
    assert ngrok.closed == 1
    assert "Traceback" not in result.output
