"""Expose the local webhook to Twilio: a tunnel, the number's SMS URL pointed at it, undone on exit.

`phischer tunnel` and `phischer up` both go through `exposed()`. The public URL is shared with
the running server through `<instance>/public_url` (Settings.tunnel_public_url() reads it when
PUBLIC_URL is unset), so signatures are checked against the URL Twilio actually called.

One instance folder, one run: `folder_lock()` refuses a second `up`/`tunnel` there while the
first lives, since both would share `<instance>/tunnel_state.json` (the original SMS URL kept
for a run killed with SIGKILL).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from phischer.atomic import atomic_files
from phischer.config import (
    PRIVATE_FILE,
    PRIVATE_FOLDER,
    ConfigError,
    Settings,
    env_unquoted,
    public_base_url,
)
from phischer.ports import PortBusyError, bare_host, http_url, listen
from phischer.redact import add_secret, mask_number, redact
from phischer.twilio_client import make_twilio_client

if TYPE_CHECKING:
    from phischer.in_flight import InFlight

log = logging.getLogger(__name__)

Echo = Callable[[str], None]

NGROK_FIXES = (
    "install ngrok (https://ngrok.com/download) and set NGROK_AUTHTOKEN "
    "(dashboard.ngrok.com → Your Authtoken) on a machine with network access, "
    "or pass --public-url https://… if you have your own domain or tunnel"
)
# The agent's errors a user can fix on the spot, by ngrok error code: said instead of the
# general NGROK_FIXES, which would send someone with a running ngrok to install it.
NGROK_CODE_FIXES = {
    "105": "that is not an ngrok authtoken: copy yours again from dashboard.ngrok.com → Your "
    "Authtoken into NGROK_AUTHTOKEN",
    "107": "that ngrok authtoken was reset or revoked: copy the current one from "
    "dashboard.ngrok.com → Your Authtoken into NGROK_AUTHTOKEN",
    "108": "this ngrok account already has an agent online (another `phischer up` or "
    "`phischer tunnel`, or ngrok on another terminal or machine; dashboard.ngrok.com/agents "
    "lists them): stop it, or pass --public-url with the https URL it serves",
    "334": "this ngrok endpoint is already online through another agent: stop it, or pass "
    "--public-url with the https URL it serves",
    "4018": "ngrok needs a (free) account: set NGROK_AUTHTOKEN (dashboard.ngrok.com → Your "
    "Authtoken), or pass --public-url https://… if you have your own domain or tunnel",
}
# The agent on PATH (or pyngrok's copy) is older than ngrok's service accepts: no longer
# supported (120), or older than the account's minimum version (121).
NGROK_CODE_FIXES["120"] = NGROK_CODE_FIXES["121"] = (
    "this ngrok agent is too old: update it (`ngrok update`, or the current one from "
    "https://ngrok.com/download), or pass --public-url https://… if you have your own domain "
    "or tunnel"
)
NGROK_CODE = re.compile(r"ERR_NGROK_(\d+)")
# Line breaks as the agent's logfmt escapes them; its errors end in CRLFs.
LOGFMT_NEWLINE = re.compile(r"\\r\\n|\\n|\\r")
# How long closing the tunnel waits for an agent that is already stopping (a Ctrl-C it got too).
AGENT_EXIT_WAIT_S = 3.0
# Bytes of a PATH hit read to tell pyngrok's `ngrok` script from the agent binary, and the
# line that gives the script away (an import, not any mention: a folder may be named so).
PYNGROK_SCRIPT_PEEK = 4096
PYNGROK_IMPORT = re.compile(rb"^[ \t]*(?:from|import)[ \t]+pyngrok\b", re.MULTILINE)
PUBLIC_URL_FILE = "public_url"
STATE_FILE = "tunnel_state.json"
LOCK_FILE = "tunnel.lock"
STOP_HINT = "Ctrl-C to stop; the number's previous SMS URL is then restored."
# The stop signals (SIGHUP: the terminal was closed; not on Windows). Ctrl-C is among them so
# that a second press while the number is being restored does not cut the restore short.
STOP_SIGNALS = tuple(
    sig
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
    if sig is not None
)
# Ctrl-C presses during the shutdown that are only answered with STILL_STOPPING: the one
# after them quits at once, for a shutdown that hangs (Twilio's 10 s timeout, twice).
PATIENT_PRESSES = 1
STILL_STOPPING = (
    b"Still shutting down (restoring the number's SMS URL, closing the tunnel); press Ctrl-C "
    b"again to quit at once and leave the SMS URL as it is.\n"
)
# How often the wait looks for a stop whose KeyboardInterrupt a finalizer swallowed.
STOP_POLL_S = 0.5


class TunnelError(ValueError):
    """The tunnel or the webhook registration cannot be set up; the message says how to fix it."""


class StoppedServing(TunnelError):
    """The server or the tunnel stopped while serving; the message says which and what to do."""


# Twilio's WhatsApp sandbox: one number shared by every account, on none of them.
WHATSAPP_SANDBOX = "+14155238886"


class WhatsAppSender(TunnelError):
    """TWILIO_PHONE_NUMBER is a WhatsApp sender (or the sandbox), whose webhook only the Console sets."""

    def __init__(self, phone: str) -> None:
        self.phone = phone
        super().__init__(self.instruction("<public URL>/sms"))

    def instruction(self, sms_url: str) -> str:
        """What to paste where in the Twilio Console, for the webhook URL `sms_url`."""
        # Twilio's API sets a phone number's SMS URL; a WhatsApp sender has no such resource
        # on the account, and the sandbox's settings are the Console's alone.
        if self.phone == WHATSAPP_SANDBOX:
            return (
                f"{self.phone} is Twilio's WhatsApp sandbox, whose webhook only the Twilio "
                f"Console sets: open Messaging → Try it out → Send a WhatsApp message → Sandbox "
                f"settings, set 'When a message comes in' to {sms_url} (POST) and save"
            )
        return (
            f"{self.phone} is a WhatsApp sender, not a phone number of the account, and its "
            f"webhook is set in the Twilio Console: open Messaging → Senders → WhatsApp "
            f"senders → {self.phone}, set the webhook URL for incoming messages to {sms_url} "
            f"(POST) and save"
        )


# A liveness check polled while serving: None while all is well, else what stopped and why.
Check = Callable[[], "str | None"]


@dataclass(frozen=True)
class Tunnel:
    """An open tunnel: its public base URL, how to close it, and how to tell it stopped."""

    public_url: str
    close: Callable[[], None] = lambda: None
    check: Check = lambda: None


TunnelOpener = Callable[[int], Tunnel]


@dataclass
class Registration:
    """What we changed on the Twilio number, so that it can be put back."""

    number_sid: str
    phone_number: str
    sms_url: str
    previous_url: str
    previous_method: str
    warnings: list[str] = field(default_factory=list)
    refused: bool = False  # Twilio refused the change: there is nothing to restore
    # The URL is the ngrok tunnel this run opened: it stops working when the run stops.
    dies_with_run: bool = False


@dataclass(frozen=True)
class Exposure:
    """A live exposure: the public base URL, the webhook URL Twilio calls, the registration."""

    public_url: str
    sms_url: str
    port: int
    registration: Registration | None  # None: a WhatsApp sender, whose webhook is set by hand
    watch: tuple[Check, ...] = ()  # what wait_for_shutdown polls (the tunnel, the server)


# -- the tunnel ------------------------------------------------------------------------------


def _private_ngrok_config(directory: str, token: str) -> str:
    """Write an ngrok agent config holding only the auth token, readable by this user alone."""
    path = os.path.join(directory, "ngrok.yml")
    # Config version 2 (a top-level authtoken; version 3 nests it under `agent:`) is read by
    # every ngrok v3 agent and passes pyngrok's checks. A JSON string is valid YAML: no token
    # can break the file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f'version: "2"\nauthtoken: {json.dumps(token)}\n')
    return path


def _is_pyngrok_script(path: str) -> bool:
    """Whether `path` is pyngrok's own `ngrok` command (a Python script), not the ngrok agent."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(PYNGROK_SCRIPT_PEEK)
    except OSError:
        return False
    # pip and uv write console scripts as short text files: a shebang, then the entry point
    # (`from pyngrok.ngrok import main`). The agent itself is a compiled binary.
    return head.startswith(b"#!") and PYNGROK_IMPORT.search(head) is not None


def find_ngrok() -> str | None:
    """The first ngrok agent on PATH, skipping pyngrok's own `ngrok` script; None if there is none.

    pyngrok installs a command named `ngrok` next to the venv's python: with the venv active
    it comes first on PATH, and run as the agent it tries to download ngrok (a page of
    traceback offline) instead of opening a tunnel.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("ngrok", path=folder) if folder else None
        if found is None:
            continue
        if not _is_pyngrok_script(found):
            return found
        log.debug("Skipping %s: pyngrok's ngrok command, not the ngrok agent", found)
    return None


def ngrok_token() -> str | None:
    """NGROK_AUTHTOKEN without the blanks and quotes an env file can leave around it; None if unset."""
    # ngrok refuses a token with them as ERR_NGROK_105.
    return env_unquoted(os.environ.get("NGROK_AUTHTOKEN", "")) or None


def open_ngrok(port: int) -> Tunnel:
    """Open an https ngrok tunnel to 127.0.0.1:PORT with pyngrok, or raise TunnelError (one line)."""
    from pyngrok import conf, ngrok, process
    from pyngrok.exception import PyngrokError, PyngrokNgrokInstallError
    from yaml import YAMLError  # pyngrok's own dependency, for ngrok.yml

    token = ngrok_token()
    add_secret(token, "NGROK_AUTHTOKEN")  # the agent's log lines quote a refused one
    # An installed binary beats pyngrok's first-use download (which fails offline). pyngrok
    # would hand a token to the agent as `--authtoken TOKEN`, which every local user can read
    # in `ps`; so NGROK_AUTHTOKEN reaches the agent through a private config file instead
    # (0600 in a fresh 0700 dir, deleted once the agent is up or failed to start), and the
    # user's ngrok.yml is never written. Without it the agent reads its own config, where
    # `ngrok config add-authtoken` put the token.
    config = conf.PyngrokConfig(ngrok_path=find_ngrok())
    config.auth_token = None  # PyngrokConfig falls back to $NGROK_AUTHTOKEN by itself
    session = _AgentSession()
    config.log_event_callback = session.saw  # pyngrok's monitor thread hands it every line
    private_dir: str | None = None
    ready = False

    def discard_token() -> None:
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)

    try:
        if token:
            private_dir = tempfile.mkdtemp(prefix="phischer-ngrok-")
            config.config_path = _private_ngrok_config(private_dir, token)
        # 127.0.0.1, not localhost: ngrok may resolve localhost to ::1 where nothing listens.
        tunnel = ngrok.connect(f"http://127.0.0.1:{port}", "http", pyngrok_config=config)
        opened = str(tunnel.public_url)
        ready = True
        # The agent read its config when it started: the token need not wait on disk for
        # the whole session (nor outlive a run killed with SIGKILL).
        discard_token()
    except PyngrokNgrokInstallError:
        raise TunnelError(
            f"No ngrok binary, and it could not be downloaded: {NGROK_FIXES}"
        ) from None
    except YAMLError as exc:  # pyngrok reads the user's ngrok.yml and lets its errors through
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise TunnelError(
            f"Could not open an ngrok tunnel: {conf.get_config_path(config)} is not valid YAML "
            f"({getattr(exc, 'problem', None) or type(exc).__name__}{where}): fix it, or set "
            f"NGROK_AUTHTOKEN (phischer then gives ngrok a config of its own), or pass "
            f"--public-url https://… if you have your own domain or tunnel"
        ) from None
    except Exception as exc:
        # Anything else pyngrok raises is one line too, never a traceback; -v shows it whole.
        log.debug("pyngrok failed", exc_info=True)
        text = _agent_says(exc)
        if not isinstance(exc, (PyngrokError, OSError)):  # its message alone may not say what
            text = f"{type(exc).__name__}: {text}"
        # ngrok quotes a rejected token back ("Your authtoken: …"), the one in its own
        # config included.
        raise TunnelError(ngrok_failure(redact(text, numbers=False))) from None
    finally:
        if not ready:  # failed, or interrupted (Ctrl-C) while the agent started
            # An agent that started but could not open the tunnel would outlive us.
            with suppress(PyngrokError, OSError):
                ngrok.kill(pyngrok_config=config)
            discard_token()

    def close() -> None:
        try:
            ngrok.disconnect(opened, pyngrok_config=config)
        except Exception:
            # Ctrl-C in a terminal reaches the whole foreground process group: the agent got
            # it too and is shutting down (its API gone first), which closes the tunnel all
            # the same. Only an agent that stays up without closing it is worth a warning.
            if not _agent_exits(config.ngrok_path):
                raise
            log.debug("ngrok agent stopped by itself; its tunnel closed with it", exc_info=True)
        finally:
            # An agent that died first (a TERM to the whole process group) fails the
            # disconnect; the kill must still run or a live agent outlives us.
            try:
                ngrok.kill(pyngrok_config=config)
            finally:
                discard_token()

    def check() -> str | None:
        # pyngrok's own test, a waitpid: get_ngrok_process() would start a new agent instead.
        return session.check(running=process.is_process_running(config.ngrok_path))

    # ngrok serves the same host over https; Twilio should call the TLS one.
    url = "https://" + opened[len("http://") :] if opened.startswith("http://") else opened
    return Tunnel(public_url=url, close=close, check=check)


class _AgentSession:
    """The agent's link to ngrok's service, as its log lines tell it: refused back, or not."""

    def __init__(self) -> None:
        self.refused: str | None = None  # the agent's error, while ngrok refuses the session

    def saw(self, line: Any) -> None:
        """Note one pyngrok NgrokLog line (called from pyngrok's monitor thread)."""
        message = line.msg or ""
        if message in ("client session established", "tunnel session started"):
            self.refused = None
        elif line.lvl == "ERROR" and "session" in message and NGROK_CODE.search(line.err or ""):
            # A lost session the agent retries by itself: a network error heals, and the
            # tunnel comes back at its URL. One that ngrok refuses with an ERR_NGROK code
            # (another agent took the account's session, the token was revoked) never does.
            self.refused = line.err

    def check(self, *, running: bool) -> str | None:
        """What stopped the tunnel, given whether the agent still runs; None if nothing did."""
        if self.refused is not None:
            reason, fix = _ngrok_problem(redact(self.refused, numbers=False))
            return f"ngrok closed this run's tunnel ({reason}), so the run stopped: {fix}"
        if running:
            return None
        # Not reopened here: what stopped the agent (a kill, a crash, the laptop's network
        # manager) may stop a new one too, and a new tunnel may get another URL.
        return (
            "The ngrok agent stopped, closing the tunnel Twilio posts to, so the run stopped "
            "too: start it again (phischer opens no new tunnel by itself)"
        )


def _agent_exits(ngrok_path: str) -> bool:
    """Whether the agent pyngrok started from NGROK_PATH is gone, or goes within AGENT_EXIT_WAIT_S."""
    from pyngrok import process

    deadline = time.monotonic() + AGENT_EXIT_WAIT_S
    while process.is_process_running(ngrok_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _agent_says(exc: Exception) -> str:
    """What the agent said: its error line, or the reason in its API's answer (else `exc`)."""
    text = getattr(exc, "ngrok_error", None)
    body = getattr(exc, "body", None)  # PyngrokNgrokHTTPError: the agent API's JSON answer
    if not text and body:
        # {"msg": "failed to start tunnel", "details": {"err": "…ERR_NGROK_334…"}}
        with suppress(ValueError, TypeError, AttributeError):
            answer = json.loads(body)
            text = (answer.get("details") or {}).get("err") or answer.get("msg")
    return str(text or exc)


def ngrok_failure(text: str) -> str:
    """One line for an agent error: the reason (with its ERR_NGROK code) and what to do."""
    reason, fix = _ngrok_problem(text)
    return f"Could not open an ngrok tunnel ({reason}): {fix}"


def _ngrok_problem(text: str) -> tuple[str, str]:
    """(reason, what to do) for an agent error: its ERR_NGROK code and first sentence, the fix."""
    # The agent logs in logfmt, where a line break inside a value is written as "\r\n" or "\n".
    text = LOGFMT_NEWLINE.sub("\n", text)
    code = NGROK_CODE.search(text)
    fix = NGROK_CODE_FIXES.get(code.group(1), NGROK_FIXES) if code else NGROK_FIXES
    if code:
        # ngrok's messages run to several lines of advice with the code at the end: the
        # first sentence says what happened, and the code is what people search for.
        lines = NGROK_CODE.sub("", text).strip().splitlines()
        first = " ".join(lines[0].split()).split(". ")[0].rstrip(".") if lines else ""
        reason = f"{code.group(0)}: {first[:120]}" if first else code.group(0)
    else:
        reason = " ".join(text.split())[:160]
    return reason, fix


def normalize_public_url(raw: str, source: str = "--public-url") -> str:
    """Check and tidy a user-given public base URL (absolute http(s), no trailing slash)."""
    try:
        return public_base_url(raw, source)
    except ConfigError as exc:
        raise TunnelError(str(exc)) from None


def resolve_public_url(option: str | None, settings: Settings) -> str | None:
    """The public URL to use instead of ngrok: --public-url, else PUBLIC_URL, else None."""
    if option:
        return normalize_public_url(option)
    if settings.public_url:
        return normalize_public_url(settings.public_url, "PUBLIC_URL")
    return None


# -- sharing the public URL with the server ---------------------------------------------------


def write_public_url(instance_path: Path, url: str) -> Path:
    """Write the public URL where Settings.tunnel_public_url() finds it (atomically)."""
    path = instance_path / PUBLIC_URL_FILE
    # A request arriving mid-write must see the old or the new URL, never half of one.
    with atomic_files(path, private=True) as (fh,):
        fh.write(url + "\n")
    return path


def remove_public_url(instance_path: Path, url: str) -> None:
    """Remove the public URL file if it still holds our URL (another tunnel may own it now)."""
    path = instance_path / PUBLIC_URL_FILE
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


# -- Twilio -----------------------------------------------------------------------------------


def _twilio_reason(exc: Exception) -> tuple[int | None, str]:
    """(HTTP status, short reason) from the SDK's two exception shapes."""
    if isinstance(exc, TwilioRestException):
        return exc.status, f"error {exc.code}: {exc.msg}" if exc.code else str(exc.msg)
    # List pages raise a bare TwilioException("Unable to fetch page", response).
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
        return status, f"error {body['code']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        return status, str(exc.args[0]) if exc.args else type(exc).__name__


@contextmanager
def twilio_errors(action: str) -> Iterator[None]:
    """Turn Twilio SDK and network failures into one-line TunnelErrors."""
    try:
        yield
    except TwilioException as exc:
        status, reason = _twilio_reason(exc)
        hint = {
            401: ": check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
            403: ": the credentials lack permission (use the account's own SID and token)",
        }.get(status or 0, "")
        raise TunnelError(f"Twilio refused to {action} (HTTP {status}, {reason}){hint}") from None
    except requests.RequestException as exc:
        raise TunnelError(
            f"Could not reach Twilio to {action} ({type(exc).__name__}): check your network"
        ) from None


def find_number(client: Client, phone: str) -> Any:
    """The account's IncomingPhoneNumber equal to `phone` (E.164), or TunnelError (none / several)."""
    with twilio_errors("list your phone numbers"):
        # PhoneNumber is a pattern for Twilio (partial numbers match), so compare exactly.
        found = client.incoming_phone_numbers.list(phone_number=phone, limit=50)
    exact = [n for n in found if n.phone_number == phone]
    if not exact and _is_whatsapp_sender(client, phone):
        raise WhatsAppSender(phone)
    if not exact:
        similar = ", ".join(sorted({n.phone_number for n in found})[:5])
        also = f" (similar numbers there: {similar})" if similar else ""
        raise TunnelError(
            f"TWILIO_PHONE_NUMBER={phone} is not a number of Twilio account "
            f"{client.account_sid}{also}: use one listed under Phone Numbers → Active numbers, "
            f"in E.164 (+15551234567)"
        )
    if len(exact) > 1:
        sids = ", ".join(n.sid for n in exact)
        raise TunnelError(
            f"TWILIO_PHONE_NUMBER={phone} matches {len(exact)} numbers on account "
            f"{client.account_sid} ({sids}): remove the duplicates so exactly one remains"
        )
    return exact[0]


def _is_whatsapp_sender(client: Client, phone: str) -> bool:
    """Whether `phone` is the WhatsApp sandbox or one of the account's WhatsApp senders."""
    if phone == WHATSAPP_SANDBOX:
        return True
    try:
        with twilio_errors("list your WhatsApp senders"):
            senders = client.messaging.v2.channels_senders.stream(channel="whatsapp", page_size=50)
            return any(s.sender_id == f"whatsapp:{phone}" for s in senders)
    except TunnelError as exc:  # credentials that may not read senders: the usual error then
        log.debug("Could not check WhatsApp senders: %s", exc)
        return False


def handled_elsewhere(client: Client, number: Any, sms_url: str) -> list[str]:
    """Warnings for settings that make Twilio ignore the number's own SMS URL."""
    phone = number.phone_number
    warnings = []
    # Twilio links a number to its Messaging Service through this field too (an MG… sid):
    # that case is the service's, checked below, and harmless when it defers to the number.
    app_sid = number.sms_application_sid or ""
    if app_sid and not app_sid.startswith("MG"):
        warnings.append(
            f"{phone} sends incoming SMS to TwiML App {number.sms_application_sid} "
            f"(sms_application_sid), which ignores the number's SMS URL: in the Twilio console "
            f"open Phone Numbers → Active numbers → {phone} → Messaging configuration and set "
            f"'A message comes in' to Webhook, or set that app's Messaging Request URL to "
            f"{sms_url} (POST)"
        )
    try:
        with twilio_errors("list your Messaging Services"):
            for service in client.messaging.v1.services.stream(page_size=50):
                members = client.messaging.v1.services(service.sid).phone_numbers.stream(
                    page_size=50
                )
                if service.sid != app_sid and not any(
                    m.sid == number.sid or m.phone_number == phone for m in members
                ):
                    continue
                if service.use_inbound_webhook_on_number:
                    continue
                inbound = service.inbound_request_url or "none (messages are dropped)"
                warnings.append(
                    f"{phone} belongs to Messaging Service '{service.friendly_name}' "
                    f"({service.sid}), whose incoming-message setting wins over the number's "
                    f"SMS URL (now: {inbound}): in the Twilio console open Messaging → Services → "
                    f"{service.friendly_name} → Integration and choose 'Send a webhook' with "
                    f"{sms_url} (POST) or 'Defer to sender's webhook', or remove the number "
                    f"from the service"
                )
    except TunnelError as exc:
        which = f"Messaging Service {app_sid}" if app_sid.startswith("MG") else "one"
        warnings.append(
            f"could not check Messaging Services ({exc}); if {phone} is in {which}, its "
            f"incoming settings may win over the number's SMS URL"
        )
    return warnings


def _load_state(instance_path: Path) -> dict[str, Any]:
    try:
        return json.loads((instance_path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(instance_path: Path, state: dict[str, Any]) -> None:
    # Whole or not at all: a half-written record would lose the URL it exists to keep.
    with atomic_files(instance_path / STATE_FILE, private=True) as (fh,):
        fh.write(json.dumps(state))


def _forget_state(instance_path: Path) -> None:
    # Only our own record: one another run wrote is the only copy of the URL it must restore.
    if _load_state(instance_path).get("pid") == os.getpid():
        (instance_path / STATE_FILE).unlink(missing_ok=True)


# Where ngrok's agents get their public addresses (free, paid and legacy domains).
NGROK_DOMAINS = ("ngrok-free.app", "ngrok-free.dev", "ngrok.app", "ngrok.dev", "ngrok.io")


def _ngrok_host(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # whatever the console let someone type
        return False
    return any(host == d or host.endswith("." + d) for d in NGROK_DOMAINS)


def plan_registration(
    client: Client, number: Any, sms_url: str, instance_path: Path, *, dies_with_run: bool = False
) -> Registration:
    """What `apply_registration` will change: the new URL, the previous URL and method, warnings."""
    phone = number.phone_number
    warnings = handled_elsewhere(client, number, sms_url)
    previous_url, previous_method = number.sms_url or "", number.sms_method or "POST"
    # A run killed with SIGKILL could not restore; its record says what the URL was before it.
    state = _load_state(instance_path)
    if state.get("number_sid") == number.sid and state.get("sms_url") == previous_url:
        previous_url, previous_method = state["previous_url"], state["previous_method"]
        log.debug("Previous run of %s did not restore; using its saved URL", mask_number(phone))
    if previous_url != sms_url and _ngrok_host(previous_url):
        # ngrok addresses are a laptop's, for a session: most likely another phischer run
        # (another folder or machine), live or long gone. Either way the user should know.
        warnings.append(
            f"{phone} pointed at {previous_url}, an ngrok tunnel: if another `phischer up` or "
            f"`phischer tunnel` serves it, it gets no texts while this run lasts; if it is "
            f"left from an earlier run, it is dead, and so is what this run puts back when "
            f"it stops"
        )
    elif previous_url == sms_url and dies_with_run:
        # ngrok gives a free account the same address on every run, so an earlier
        # `--no-restore` run left the number on this very tunnel: "back" is a closed tunnel.
        warnings.append(
            f"{phone} already pointed at {sms_url}, this tunnel's address, left by an earlier "
            f"run (--no-restore, or one that never restored): it stays there when this run stops"
        )
    return Registration(
        number_sid=number.sid,
        phone_number=phone,
        sms_url=sms_url,
        previous_url=previous_url,
        previous_method=previous_method,
        warnings=warnings,
        dies_with_run=dies_with_run,
    )


def apply_registration(client: Client, registration: Registration, instance_path: Path) -> None:
    """Point the number's SMS URL at `registration.sms_url` (POST), recorded in the state file first."""
    phone = registration.phone_number
    prior = _load_state(instance_path)
    # Recorded before the request: a run killed or interrupted while Twilio applies it
    # (the change may or may not have landed) still knows the URL to put back.
    transient = ("warnings", "refused", "dies_with_run")
    record = {k: v for k, v in asdict(registration).items() if k not in transient}
    _save_state(instance_path, {**record, "pid": os.getpid()})
    try:
        with twilio_errors(f"update the SMS URL of {phone}"):
            client.incoming_phone_numbers(registration.number_sid).update(
                sms_url=registration.sms_url, sms_method="POST"
            )
    except TunnelError:
        registration.refused = True
        # Nothing changed: keep what an earlier, killed run recorded.
        if prior:
            _save_state(instance_path, prior)
        else:
            _forget_state(instance_path)
        raise
    log.debug("Registered the SMS URL of %s", mask_number(phone))


def restore_webhook(client: Client, registration: Registration, instance_path: Path) -> str | None:
    """Put the previous SMS URL back (unless someone changed it meanwhile); say what happened."""
    if registration.refused:
        return None
    phone = registration.phone_number
    with twilio_errors(f"read the SMS URL of {phone}"):
        current = client.incoming_phone_numbers(registration.number_sid).fetch()
    now = current.sms_url or ""
    if now != registration.sms_url:
        _forget_state(instance_path)
        if now == registration.previous_url:  # interrupted before Twilio applied the change
            return f"The SMS URL of {phone} was not changed ({now or '(empty)'})."
        return f"Left the SMS URL of {phone} as is: it was changed to {now!r} meanwhile."
    with twilio_errors(f"restore the SMS URL of {phone}"):
        client.incoming_phone_numbers(registration.number_sid).update(
            sms_url=registration.previous_url, sms_method=registration.previous_method
        )
    _forget_state(instance_path)
    if registration.dies_with_run and registration.previous_url == registration.sms_url:
        return f"Warning: {_stays_dead(phone, now, ', as before this run')}"
    shown = registration.previous_url or "(empty)"
    return f"Restored the SMS URL of {phone} to {shown} ({registration.previous_method})."


# -- lifecycle --------------------------------------------------------------------------------


def _folder_owner(fd: int) -> str:
    """Who holds the lock on `fd`, from what the holder wrote into the lock file."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0))
        return f"`phischer {owner['command']}` (pid {int(owner['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is still writing it
        return "`phischer up` or `phischer tunnel`"


@contextmanager
def folder_lock(instance_path: Path, command: str) -> Iterator[None]:
    """Be the only `up`/`tunnel` of this instance folder while the block runs, else TunnelError.

    The folder's one state file is what remembers the number's original SMS URL if a run is
    killed with SIGKILL: a second run would take it over and the first delete it on exit. The
    kernel drops the lock when its holder dies, even by SIGKILL, so a dead run never blocks the
    next one (which restores what it left). The file stays: removing it would let two runs
    each lock a file of their own.
    """
    path = instance_path / LOCK_FILE
    try:
        instance_path.mkdir(PRIVATE_FOLDER, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as exc:
        raise TunnelError(f"Cannot write to {instance_path} ({exc.strerror}): check it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TunnelError(
                f"another {_folder_owner(fd)} serves this number from this folder "
                f"({instance_path}): stop it first"
            ) from None
        except OSError as exc:  # a file system without locks: run unguarded, as before
            log.debug("Cannot lock %s (%s); not guarding against a second run", path, exc)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class _StopState:
    """What the stop-signal handler has seen, shared with the startup checkpoints."""

    requested: bool = False  # a stop was asked for (SIGTERM, SIGHUP, a swallowed Ctrl-C)
    raised: bool = False  # its KeyboardInterrupt is on its way: later stop signals are ignored
    presses: int = 0  # Ctrl-C presses since then (more than PATIENT_PRESSES: quit at once)


_stop = _StopState()


def stop_if_requested() -> None:
    """Raise KeyboardInterrupt if a stop was asked for: one whose exception Python dropped.

    A signal handler runs wherever the main thread is, also inside a finalizer or a garbage
    collection callback, where an exception is printed as "Exception ignored in …" and dropped.
    Startup calls this between its steps and the wait calls it while serving, so such a stop
    still undoes everything.
    """
    if _stop.requested:
        _stop.raised = True
        raise KeyboardInterrupt


def _on_stop_signal(signum: int, frame: object) -> None:
    _stop.requested = True  # first: if the raise below is swallowed, the checkpoints stop us
    if _stop.raised:
        # A supervisor repeating TERM must not interrupt the restore it asked for; nor must
        # an impatient second Ctrl-C, but someone pressing on means it.
        if signum == signal.SIGINT:
            _stop.presses += 1
            if _stop.presses > PATIENT_PRESSES:
                raise KeyboardInterrupt
            # Straight to stderr's descriptor: the main thread may be inside a print.
            with suppress(OSError):
                os.write(2, STILL_STOPPING)
        return
    _stop.raised = True
    raise KeyboardInterrupt


def _stop_keeper(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable hook that turns a swallowed KeyboardInterrupt into a pending stop."""

    def hook(unraisable: Any) -> None:
        exc_type = unraisable.exc_type
        on_main = threading.current_thread() is threading.main_thread()
        if on_main and isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            _stop.requested = True
            _stop.raised = False  # it never got anywhere: the next signal raises again
            log.debug("A stop arrived inside %r; stopping at the next step", unraisable.object)
            return
        previous(unraisable)

    return hook


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP stop us like Ctrl-C: `finally` blocks restore and close everything.

    SIGHUP is what closing the terminal window sends; left at its default it would kill the
    process with the number still pointing at a tunnel that is about to vanish. Once stopping,
    repeated signals are ignored, except a Ctrl-C pressed again after STILL_STOPPING. A stop is
    never lost: the handler records it before raising, and a KeyboardInterrupt Python drops
    (raised inside a finalizer) is caught by an unraisable hook; `stop_if_requested()` then
    raises it again at the next startup step or while waiting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = (_stop.requested, _stop.raised, _stop.presses)
    _stop.requested = _stop.raised = False
    _stop.presses = 0
    hook = sys.unraisablehook
    sys.unraisablehook = _stop_keeper(hook)
    # A signal ignored when we started stays ignored: `nohup phischer up &` asked to outlive
    # the terminal, and a background job of a script is not meant to get Ctrl-C.
    previous = {
        sig: signal.signal(sig, _on_stop_signal)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.unraisablehook = hook
        _stop.requested, _stop.raised, _stop.presses = saved


def _forget_unless_refused(registration: Registration, instance_path: Path) -> None:
    """--no-restore: drop the record, unless the change was refused (then it is an older run's)."""
    if not registration.refused:
        _forget_state(instance_path)


def _step(echo: Echo, what: str, fn: Callable[[], object]) -> None:
    """Run one clean-up step; a failure is reported and the other steps still run."""
    try:
        result = fn()
    except Exception as exc:  # clean-up must go on whatever one step does
        echo(f"Warning: could not {what}: {exc}")
        return
    if isinstance(result, str):
        echo(result)


def restore_failure(registration: Registration, exc: Exception | None) -> str:
    """One line for a restore that failed (None: was cut short): why, and what to set by hand."""
    phone = registration.phone_number
    previous = registration.previous_url
    # A TunnelError already says what was tried ("Twilio refused to restore the SMS URL of …").
    if exc is None:
        reason = f"quit before the SMS URL of {phone} was restored"
    elif isinstance(exc, TunnelError):
        reason = str(exc)
    else:
        reason = f"could not restore the SMS URL of {phone} ({type(exc).__name__}: {exc})"
    back = f"set it back to {previous} ({registration.previous_method})" if previous else "clear it"
    return (
        f"{reason}: {back} in the Twilio console (Phone Numbers → Active numbers → {phone}), "
        f"or run `phischer tunnel` again: it repairs it"
    )


def _restoring(
    client: Client, registration: Registration, instance_path: Path, echo: Echo
) -> Callable[..., bool]:
    """The exit step that puts the number's previous SMS URL back.

    A failure on a clean stop is raised once the other steps have run, so the command exits 1
    and a supervisor can tell the number was left on a closed URL. When the block is already
    failing (an error, a stop during startup: exit 1 either way) it is a warning, not to mask
    that.
    """

    def restore(exc_type: type[BaseException] | None, *_: object) -> bool:
        try:
            result = restore_webhook(client, registration, instance_path)
        except KeyboardInterrupt:  # Ctrl-C pressed on to quit at once: what is left to do
            echo(f"Warning: {restore_failure(registration, None)}")
            raise
        except Exception as exc:  # the other clean-up steps must still run
            line = restore_failure(registration, exc)
            if exc_type is not None:
                echo(f"Warning: {line}")
                return False
            raise TunnelError(line) from None
        if result:
            echo(result)
        return False

    return restore


def _stays_dead(phone: str, sms_url: str, why: str) -> str:
    """The number is left on this run's ngrok URL, which closes with it: what that means."""
    return (
        f"the SMS URL of {phone} stays {sms_url}{why}, which stops working as the tunnel "
        f"closes: texts fail (Twilio error 11200) until you point the number elsewhere in the "
        f"Twilio console or run `phischer up` or `tunnel` again"
    )


def _say_left_on(
    echo: Echo, settings: Settings, registration: Registration, public_url: str | None
) -> None:
    """--no-restore, on exit: what the number is left on, and what that asks of the user."""
    phone, sms_url = registration.phone_number, registration.sms_url
    if not public_url:
        echo(f"Warning: {_stays_dead(phone, sms_url, ' (--no-restore)')}")
        return
    shared = settings.instance_path / PUBLIC_URL_FILE
    echo(
        f"The SMS URL of {phone} stays {sms_url} (--no-restore); {shared} keeps {public_url} "
        f"for the server's signature checks."
    )
    # The file lasts until another `up`/`tunnel` here replaces it; PUBLIC_URL lasts.
    if settings.public_url != public_url:
        echo(
            f"Hint: set PUBLIC_URL={public_url} in .env so `phischer serve` keeps validating "
            f"signatures for it."
        )


@contextmanager
def exposed(
    settings: Settings,
    client: Client,
    *,
    port: int,
    public_url: str | None = None,
    opener: TunnelOpener | None = None,
    restore: bool = True,
    echo: Echo = print,
) -> Iterator[Exposure]:
    """Open the tunnel (unless `public_url`), share and register its URL; undo all on exit."""
    assert settings.twilio_phone_number, "make_twilio_client() checks TWILIO_PHONE_NUMBER first"
    instance = settings.instance_path
    # Look the number up first: a wrong TWILIO_PHONE_NUMBER should not cost a tunnel.
    try:
        number, whatsapp = find_number(client, settings.twilio_phone_number), None
    except WhatsAppSender as exc:
        # Serving is still of use: the user pastes the URL in the Console (said below).
        number, whatsapp = None, exc
    stop_if_requested()
    with ExitStack() as stack:
        watch: tuple[Check, ...] = ()  # a URL of the user's own: nothing here to watch
        if public_url:
            base = public_url
            echo(f"Using the public URL {base} (no ngrok).")
        else:
            tunnel = (opener or open_ngrok)(port)
            watch = (tunnel.check,)
            stack.callback(_step, echo, "close the tunnel", tunnel.close)
            base = normalize_public_url(tunnel.public_url, "the tunnel URL")
            echo(f"Tunnel open: {base} → http://127.0.0.1:{port}")
        stop_if_requested()
        write_public_url(instance, base)
        # --no-restore on a URL that outlives us (--public-url, PUBLIC_URL) keeps the file:
        # Twilio goes on calling it, and a running server must go on checking signatures
        # against it.
        keep_shared = False

        def unshare() -> None:
            if not keep_shared:
                remove_public_url(instance, base)

        stack.callback(unshare)
        if whatsapp is not None:
            echo(f"WhatsApp: {whatsapp.instruction(base + '/sms')}.")
            if not public_url:
                stack.callback(echo, _whatsapp_left_on(whatsapp.phone, base + "/sms"))
            yield Exposure(base, base + "/sms", port, registration=None, watch=watch)
            return
        registration = plan_registration(
            client, number, base + "/sms", instance, dies_with_run=not public_url
        )
        for warning in registration.warnings:
            echo(f"Warning: {warning}")
        # Undo steps go in before the change: a Ctrl-C or SIGTERM while Twilio applies it
        # still restores (restore_webhook looks at the number first).
        if restore:
            stack.push(_restoring(client, registration, instance, echo))
        else:
            stack.callback(_forget_unless_refused, registration, instance)
        stop_if_requested()
        apply_registration(client, registration, instance)
        if not restore:
            # An ngrok URL dies with the tunnel: nothing to keep checking against.
            keep_shared = bool(public_url)
            stack.callback(_say_left_on, echo, settings, registration, public_url)
        yield Exposure(
            public_url=base,
            sms_url=base + "/sms",
            port=port,
            registration=registration,
            watch=watch,
        )


def _whatsapp_left_on(phone: str, sms_url: str) -> str:
    """On exit: the WhatsApp webhook pasted by hand stays on this run's ngrok URL."""
    return (
        f"WhatsApp: {phone}'s webhook stays {sms_url}, which stops working as the tunnel "
        f"closes: paste the next run's URL in the Twilio Console (texts fail with error 11200 "
        f"until then)"
    )


def wait_for_shutdown(exposure: Exposure) -> None:
    """Block until Ctrl-C or SIGTERM (KeyboardInterrupt), or until what serves stops (StoppedServing)."""
    while True:
        # The signal's KeyboardInterrupt ends the sleep; a stop a finalizer swallowed ends here.
        stop_if_requested()
        # A dead server or tunnel would leave Twilio failing every text (11200) while the
        # terminal still says "Text … now": each check is a flag or a waitpid, cheap at 2 Hz.
        for check in exposure.watch:
            problem = check()
            if problem:
                raise StoppedServing(problem)
        time.sleep(STOP_POLL_S)


def _wait(
    wait: Callable[[Exposure], None] | None, exposure: Exposure, echo: Echo, last_line: str
) -> None:
    # A stop swallowed during startup: undo everything and leave with "Aborted!", as a stop
    # before the last line always does.
    stop_if_requested()
    try:
        # Printed inside the try: a signal right after the user sees it is a clean stop.
        echo(last_line)
        (wait or wait_for_shutdown)(exposure)
    except (KeyboardInterrupt, StoppedServing) as exc:
        _stop.raised = True  # a TERM now (after Ctrl-C too) must not interrupt the restore
        echo("Shutting down…")
        if isinstance(exc, StoppedServing):
            raise  # restored and closed as on Ctrl-C, then said last, with exit code 1


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run_tunnel(
    settings: Settings,
    *,
    port: int = 5000,
    public_url: str | None = None,
    restore: bool = True,
    opener: TunnelOpener | None = None,
    wait: Callable[[Exposure], None] | None = None,
    echo: Echo = print,
) -> None:
    """`phischer tunnel`: expose an already running server and register it until stopped."""
    client = make_twilio_client(settings)
    base = resolve_public_url(public_url, settings)
    if settings.public_url and base and settings.public_url.rstrip("/") != base:
        echo(
            f"Warning: PUBLIC_URL={settings.public_url} differs from {base}; a server started with "
            f"it checks signatures against PUBLIC_URL and will answer 403"
        )
    with (
        folder_lock(settings.instance_path, "tunnel"),
        sigterm_as_interrupt(),
        exposed(
            settings, client, port=port, public_url=base, opener=opener, restore=restore, echo=echo
        ) as exposure,
    ):
        if exposure.registration is not None:
            echo(f"Twilio will POST texts to {settings.twilio_phone_number} to {exposure.sms_url}")
        shared = settings.instance_path / PUBLIC_URL_FILE
        if _listening(port):
            echo(
                f"Server found on 127.0.0.1:{port}; if it runs from this folder it reads the "
                f"public URL from {shared} (else set PUBLIC_URL where it runs)."
            )
        else:
            echo(
                f"Warning: nothing listens on 127.0.0.1:{port} yet: start `phischer serve --port "
                f"{port}` (or use `phischer up`), else Twilio logs error 11200"
            )
        hint = STOP_HINT if restore else "Ctrl-C to stop (--no-restore: the number keeps this URL)."
        if exposure.registration is None:
            hint = "Ctrl-C to stop."  # a WhatsApp webhook: nothing was changed to put back
        _wait(wait, exposure, echo, hint)


# -- phischer up ------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server socket ourselves: werkzeug's make_server prints and exits on a busy port."""
    try:
        return listen(host, port)
    except PortBusyError as exc:
        raise TunnelError(str(exc)) from None


class _ServerThread(threading.Thread):
    """The thread `up` serves the webhook in, which remembers what ended it early."""

    def __init__(self, server: Any) -> None:
        super().__init__(name="phischer-http", daemon=True)
        self.server = server
        self.failure: BaseException | None = None

    def run(self) -> None:
        """Serve until shut down; an exception ends serving, and check() then says so."""
        try:
            self.server.serve_forever()
        except BaseException as exc:  # whatever it is, the webhook no longer answers
            self.failure = exc
            log.debug("The web server's thread failed", exc_info=True)

    def check(self) -> str | None:
        """None while serving, else what stopped the server (a Check for wait_for_shutdown)."""
        if self.is_alive():
            return None
        why = f"{type(self.failure).__name__}: {self.failure}" if self.failure else "it returned"
        return (
            f"The web server of this run stopped ({why}), so the run stopped too: start it "
            f"again (`phischer -v up` logs the error in full)"
        )


def _stop_app(app: Any, in_flight: InFlight) -> None:
    """Stop as `phischer serve` does on Ctrl-C: work in progress gets QUIT_GRACE_S to finish.

    A slow reply still at the model (up to a minute) is not waited for: its text stays
    stored "processing" and the recovery sweep answers it when the server runs again.
    """
    from phischer.server import QUIT_GRACE_S, finish_in_time

    finish_in_time(app, in_flight, time.monotonic() + QUIT_GRACE_S)
    services = app.extensions.get("phischer")
    if services is not None:
        services.db.dispose()


def text_now_banner(settings: Settings, exposure: Exposure, local_url: str) -> list[str]:
    """The lines `phischer up` prints once everything is live."""
    from phischer.db import Database
    from phischer.personas import default_persona, list_personas

    db = Database(settings.database_url)
    try:
        with db.read() as session:
            active = default_persona(session, settings.default_persona)
            keywords = [f"#{p.keyword}" for p in list_personas(session)]
            who = f"{active.name} (#{active.keyword})" if active is not None else None
    finally:
        db.dispose()
    phone = settings.twilio_phone_number
    if exposure.registration is not None:
        target, text = f"SMS URL of {phone}", f"Text {phone} now"
    else:  # a WhatsApp sender: the user pastes the URL (the line above the banner says where)
        target = f"paste as the WhatsApp webhook of {phone}"
        text = f"Message {phone} on WhatsApp once it is pasted"
    lines = [
        f"Serving  {local_url}  (health: {local_url}/healthz)",
        f"Twilio   {exposure.sms_url}  → {target}",
    ]
    if who is None:
        lines.append(
            f"{text} — but there is no persona yet: add one with "
            f"`phischer persona add NAME --keyword KW --dataset FILE` (no restart needed)."
        )
    else:
        lines.append(f"{text}: you are talking to {who}.")
        lines.append(
            f"Keywords: {', '.join(keywords)} (switch persona), #list, #who, #reset, "
            f"STOP to opt out."
        )
    return lines


def run_up(
    settings: Settings,
    *,
    port: int = 5000,
    public_url: str | None = None,
    host: str = "127.0.0.1",
    opener: TunnelOpener | None = None,
    wait: Callable[[Exposure], None] | None = None,
    echo: Echo = print,
) -> None:
    """`phischer up`: migrate, serve in-process, tunnel and register; undo everything on exit."""
    from werkzeug.serving import make_server

    from phischer import create_app
    from phischer.cli import migrate_or_explain
    from phischer.in_flight import InFlight

    client = make_twilio_client(settings)  # names a missing variable before any tunnel opens
    base = resolve_public_url(public_url, settings)
    # Locked first: a second `up` here is refused before it migrates, listens or calls Twilio.
    with folder_lock(settings.instance_path, "up"), ExitStack() as stack:
        migrate_or_explain(settings.database_url)
        # With a fixed URL the app gets it directly; with ngrok it reads <instance>/public_url,
        # which exposed() writes before Twilio is told about the tunnel.
        app_settings = settings.with_overrides(public_url=base) if base else settings
        stack.enter_context(sigterm_as_interrupt())
        sock = _listen(host, port)
        stack.callback(sock.close)
        app = create_app(app_settings)
        in_flight = InFlight()
        stack.callback(_step, echo, "stop the app", lambda: _stop_app(app, in_flight))
        stop_if_requested()

        def counted(environ: Any, start_response: Any) -> Any:
            # Counted, so that stopping gives a webhook request in progress its moment.
            with in_flight.one():
                return app(environ, start_response)

        # werkzeug wants "::1", not the URL form "[::1]" that ports.listen also takes.
        server = make_server(bare_host(host), port, counted, threaded=True, fd=sock.fileno())
        thread = _ServerThread(server)
        thread.start()
        # What a crash or restart left unanswered goes out now, not at the next text.
        app.extensions["phischer"].sms.sweeper.get()
        app.extensions["phischer"].sms.prepare()  # retrieval indexes, built in the background
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        bound = int(server.server_address[1])  # the real port when --port 0
        local_url = http_url(host, bound)
        with exposed(
            settings, client, port=bound, public_url=base, opener=opener, echo=echo
        ) as exposure:
            for line in text_now_banner(settings, exposure, local_url):
                echo(line)
            watched = replace(exposure, watch=(*exposure.watch, thread.check))
            hint = STOP_HINT if exposure.registration is not None else "Ctrl-C to stop."
            _wait(wait, watched, echo, hint)
