"""Why a Twilio signature was refused: the likely cause, worked out only for a refused request."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from flask import Request

from phischer.config import Settings, no_auth_token
from phischer.ports import DEFAULT_PORTS, is_local_host, without_default_port

TOKEN_HINT = (
    "the signature fits no other scheme, port or host for it, so if that is the number's "
    "SMS URL, TWILIO_AUTH_TOKEN may be another account's, or a rotated or secondary token "
    "(use the primary Auth Token of the account that owns the number)"
)


def token_hint(settings: Settings) -> str:
    """What to suspect when no URL fits: the token, or that there is none but the development one."""
    if settings.twilio_auth_token:
        return TOKEN_HINT
    # No TWILIO_AUTH_TOKEN (a platform's config vars without it): "may be another account's"
    # sent users hunting for a token they had never set.
    return (
        f"{no_auth_token(settings)}, which only `phischer text`/`chat` sign with: set "
        "TWILIO_AUTH_TOKEN to the Auth Token of the account that owns the number"
    )


def without_userinfo(url: str) -> str:
    """`url` minus any user:password (a PUBLIC_URL may carry one): fit for a log line."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a Host header urlsplit refuses ("[::1"): the client's, not a secret
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def variants(url: str) -> list[str]:
    """`url` with http and https, each without a port, with its own and with the default one.

    Twilio signs the SMS URL exactly as it is set on the number (https://host/sms, or
    http://host:80/sms), which need not be the scheme or port this server sees.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a Host header with no valid port ("h:abc"): nothing to vary
        return [url]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0] if port is not None else hostport
    found: list[str] = []
    for scheme in ("https", "http"):
        for each in (None, port, DEFAULT_PORTS[scheme]):
            netloc = userinfo + at + host + ("" if each is None else f":{each}")
            candidate = urlunsplit(parts._replace(scheme=scheme, netloc=netloc))
            if candidate not in found:
                found.append(candidate)
    return found


def last_value(request: Request, header: str) -> str | None:
    """The value the nearest proxy added to a forwarded header (its last), or None."""
    value = request.headers.get(header)
    return value.rpartition(",")[2].strip() or None if value else None


def local_host_header(host: str) -> bool:
    """Whether a Host header (with or without a port) names this machine or a private network."""
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:  # "[::1": not a host Twilio could have signed either
        return True
    return is_local_host(name)


def rejection_hint(
    request: Request,
    url: str,
    tail: str,
    base: str | None,
    settings: Settings,
    fits: Callable[[str], bool],
) -> str:
    """The likely cause of a signature refused for `url`, and what to change.

    `base` is the public base URL the check used (None: the request's own URL), `tail` the
    path and query after it, and `fits` tells whether the signature is one for a given URL.
    It tries the URLs Twilio may have signed instead (a few dozen HMACs at most) and reads
    instance/public_url, so it runs for refused requests only, never for an accepted text.
    """
    own_base = url[: len(url) - len(tail)]
    forwarded = [h for h in ("X-Forwarded-Proto", "X-Forwarded-Host") if h in request.headers]
    unread = bool(forwarded) and not settings.trust_proxy and base is None
    proxy_fix = " or TRUST_PROXY=true (only behind a proxy you run)" if unread else ""
    file_url = settings.public_url_file() if settings.public_url else None
    stale_file = file_url if file_url and file_url != settings.public_url else None

    if stale_file:  # `up`/`tunnel` wrote a URL while PUBLIC_URL (which wins) names another
        for candidate in variants(stale_file + tail):
            if fits(candidate):
                return (
                    f"it fits {without_userinfo(candidate)}, the URL `phischer up`/`tunnel` "
                    f"wrote to instance/public_url, but PUBLIC_URL={without_userinfo(base or '')} "
                    "(environment or .env) wins over that file: remove PUBLIC_URL, or set it "
                    f"to {without_userinfo(candidate[: len(candidate) - len(tail)])}"
                )
    for candidate in variants(url):
        if candidate != url and fits(candidate):
            fixed = without_userinfo(candidate[: len(candidate) - len(tail)])
            return (
                f"it fits {without_userinfo(candidate)} (another scheme or port): Twilio signs "
                "the SMS URL exactly as it is set on the number, so set PUBLIC_URL="
                f"{fixed}{proxy_fix}, or set the number's SMS URL to {without_userinfo(url)}"
            )

    # Twilio signed the URL set on the number; the host this request was sent to hints at it.
    try:
        checked = urlsplit(own_base)
    except ValueError:  # a Host header urlsplit refuses ("[::1"): no host of Twilio's
        return token_hint(settings)
    hints = []
    seen = {checked.netloc.rpartition("@")[2].lower()}
    for header in ("X-Forwarded-Host", "Host"):
        host = last_value(request, header)
        # Behind a platform router Host carries X-Forwarded-Port (":443"): the same host.
        if not host or without_default_port(checked.scheme, host.lower()) in seen:
            continue
        seen.add(host.lower())
        for candidate in variants(f"{checked.scheme}://{host}{checked.path}{tail}"):
            if fits(candidate):
                return (
                    f"it fits {without_userinfo(candidate)}, the host this request was sent to "
                    f"({header}): Twilio signs the SMS URL set on the number, so set PUBLIC_URL="
                    f"{without_userinfo(candidate[: len(candidate) - len(tail)])}{proxy_fix}"
                )
        # A proxy or tunnel on this machine may rewrite Host to where it forwards: Twilio
        # never signs a loopback or private URL (it cannot reach one), so it hints at nothing.
        if not hints and not local_host_header(host):
            hints.append(
                f"it was checked for {without_userinfo(url)}, but sent to host {host} "
                f"({header}): Twilio signs the SMS URL set on the number, which that host hints "
                "at, so set PUBLIC_URL to that URL's base"
            )
    if stale_file:
        hints.insert(
            0,
            f"it was checked for PUBLIC_URL={without_userinfo(base or '')} (environment or .env), "
            f"while instance/public_url (written by `phischer up`/`tunnel`) holds "
            f"{without_userinfo(stale_file)}: PUBLIC_URL wins, so remove it if it is stale",
        )
    if unread:
        hints.append(
            f"{' and '.join(forwarded)} {'are' if len(forwarded) > 1 else 'is'} ignored while "
            "TRUST_PROXY is off: set TRUST_PROXY=true (only behind a proxy you run) or PUBLIC_URL"
        )
    return "; ".join([*hints, token_hint(settings)])
