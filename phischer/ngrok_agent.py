"""The ngrok agent: finding it, handing it the token privately, opening a tunnel, its errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import suppress
from typing import Any

from phischer.config import env_unquoted
from phischer.redact import add_secret, redact
from phischer.tunnel_types import Tunnel, TunnelError

log = logging.getLogger(__name__)

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
    "`phischer tunnel`, ngrok on another terminal or machine, or the agent of a run that was "
    "killed (`pgrep -a ngrok`); dashboard.ngrok.com/agents lists them): stop it, or pass "
    "--public-url with the https URL it serves",
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
# The logger pyngrok relays the agent's own log lines to (cli keeps it quiet without -v).
AGENT_LOG = "pyngrok.process.ngrok"
# Line breaks as the agent's logfmt escapes them; its errors end in CRLFs.
LOGFMT_NEWLINE = re.compile(r"\\r\\n|\\n|\\r")
# How long closing the tunnel waits for an agent that is already stopping (a Ctrl-C it got too).
AGENT_EXIT_WAIT_S = 3.0
# Bytes of a PATH hit read to tell pyngrok's `ngrok` script from the agent binary, and the
# line that gives the script away (an import, not any mention: a folder may be named so).
PYNGROK_SCRIPT_PEEK = 4096
PYNGROK_IMPORT = re.compile(rb"^[ \t]*(?:from|import)[ \t]+pyngrok\b", re.MULTILINE)


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
    session = _AgentSession(config.ngrok_path)
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
        if text == str(exc):  # no line of the agent's says why: it may be one pyngrok left
            text = session.unread_error() or text
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

    def __init__(self, ngrok_path: str) -> None:
        self.ngrok_path = ngrok_path
        self.refused: str | None = None  # the agent's error, while ngrok refuses the session
        self.up = False  # the session was established (a failure before is open_ngrok's error)
        self.lost = False  # it dropped since, and the agent is reconnecting
        self.agent: Any = None  # pyngrok's record of the starting agent (its Popen in .proc)

    def saw(self, line: Any) -> None:
        """Note one pyngrok NgrokLog line (called from pyngrok's monitor thread)."""
        if self.agent is None:
            # Kept from the agent's first line, while pyngrok still holds it: pyngrok drops
            # the record of an agent that failed to start (see unread_error).
            from pyngrok import process

            self.agent = getattr(process, "_current_processes", {}).get(self.ngrok_path)
        message = line.msg or ""
        if message in ("client session established", "tunnel session started"):
            if self.lost:
                log.info("The ngrok agent is connected again: texts reach this run again")
            self.refused, self.up, self.lost = None, True, False
        elif line.lvl == "ERROR" and "session" in message and NGROK_CODE.search(line.err or ""):
            # A lost session the agent retries by itself: a network error heals, and the
            # tunnel comes back at its URL. One that ngrok refuses with an ERR_NGROK code
            # (another agent took the account's session, the token was revoked) never does.
            self.refused = line.err
        elif line.lvl == "ERROR" and "session" in message and self.up and not self.lost:
            # Said once a drop (the agent logs each retry): the user sees why texts fail.
            self.lost = True
            reason, _ = _ngrok_problem(redact(line.err or message, numbers=False))
            log.warning(
                "The ngrok agent lost its connection to ngrok (%s): texts fail with Twilio error "
                "11200 until it is back (it reconnects by itself)",
                reason,
            )

    def unread_error(self) -> str | None:
        """The error line of an agent that exited at startup, from what pyngrok left unread.

        pyngrok stops reading the agent's output as soon as it sees the agent has exited,
        which a quick exit (a refused token) can beat: its error line, with the ERR_NGROK code
        that says what to do, is then still in the pipe. It is read here, and logged as
        pyngrok logs the agent's lines (shown with -v).
        """
        from pyngrok.log import NgrokLog

        proc = getattr(self.agent, "proc", None)
        if proc is None or proc.stdout is None or proc.poll() is None:
            return None  # still running (pyngrok gave up waiting): reading would block
        try:
            unread = proc.stdout.read()  # to EOF: the agent is gone
        except (OSError, ValueError):  # a pipe pyngrok closed
            return None
        error = None
        for text in unread.splitlines():
            line = NgrokLog(text)
            if not line.line:
                continue
            level = line.lvl if line.lvl != "NOTSET" else "INFO"
            logging.getLogger(AGENT_LOG).log(getattr(logging, level, logging.INFO), line.line)
            if level in ("ERROR", "CRITICAL") and error is None:
                error = line.err or line.msg
        return error

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
