"""Binding the server's port ourselves (a busy port is one clear line), and host/URL helpers."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any
from urllib.parse import urlsplit

# The port a URL without one is on, by its scheme.
DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_PORT_SUFFIX = {scheme: f":{port}" for scheme, port in DEFAULT_PORTS.items()}


def without_default_port(scheme: str, host: str) -> str:
    """A Host header minus the port `scheme` implies ("app.example.com:443" for https)."""
    default = DEFAULT_PORT_SUFFIX.get(scheme)
    return host[: -len(default)] if default and host.endswith(default) else host


class PortBusyError(ValueError):
    """The port cannot be listened on (another program has it, or no permission)."""


def bare_host(host: str) -> str:
    """`host` without the brackets a URL puts around an IPv6 address ("[::1]" -> "::1")."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    bare = bare_host(host)
    return f"[{bare}]" if ":" in bare and "[" not in bare else bare


def host_port(host: str, port: int) -> str:
    """HOST:PORT as URLs and gunicorn's --bind write it: an IPv6 address in brackets."""
    return f"{url_host(host)}:{port}"


def http_url(host: str, port: int) -> str:
    """The http:// base URL of a server listening on host:port."""
    return f"http://{host_port(host, port)}"


# Set by the Makefile's `make run`, whose user gives the address as HOST=… and PORT=….
MAKE_RUN_VAR = "PHISCHER_MAKE_RUN"


def _give(option: str, value: str) -> str:
    """How to start the server with `--option value`: as `make run` takes it, if it ran this."""
    if os.environ.get(MAKE_RUN_VAR):
        return f"run `make run {option.upper()}={value}`"
    return f"pass --{option} {value}"


def _not_here(host: str) -> str:
    """The fix for a host this machine cannot listen on."""
    return (
        f"{bare_host(host)} is not an address of this machine: {_give('host', '127.0.0.1')} "
        "(or [::1] for IPv6)"
    )


def _address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """The address family and socket address to bind host:port to, or PortBusyError."""
    try:
        found = socket.getaddrinfo(
            bare_host(host) or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise PortBusyError(
            f"Cannot listen on {host_port(host, port)} ({reason}): {_not_here(host)}"
        ) from None
    # A name with both kinds of address binds IPv4, as gunicorn does for names (and as
    # "localhost" always did here): the check must hold the address the server will take.
    family, _, _, _, address = next((a for a in found if a[0] == socket.AF_INET), found[0])
    return family, address


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6), or PortBusyError saying what to do."""
    family, address = _address(host, port)
    shown = host_port(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        # Only a busy port is another program's doing; anything else is this host or port.
        if exc.errno == errno.EADDRINUSE:
            fix = f"stop the program using it or {_give('port', 'N')}"
        elif exc.errno == errno.EACCES:
            fix = f"no permission for this port (below 1024 needs root): {_give('port', 'N')}"
        else:
            fix = _not_here(host)
        raise PortBusyError(f"Cannot listen on {shown} ({exc.strerror}): {fix}") from None
    return sock


def is_local_host(host: str) -> bool:
    """Whether a URL's host is this machine or a private network: localhost or such an IP."""
    # Such a host is reached directly, never through HTTP_PROXY / ALL_PROXY: a corporate
    # proxy cannot reach the Ollama or the phischer server on this machine (or the LAN).
    host = bare_host(host).lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a name: only DNS knows where it is, and the proxy may be the way there
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def url_origin(url: str) -> str:
    """The server a base URL names, as scheme://host[:port]: no path, query or credentials."""
    # Shown in errors and logs: a query string (?api-key=…) or user:password@ may hold a secret.
    parts = urlsplit(url.strip())
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a port number: the host alone still says which server
        port = ""
    return f"{parts.scheme.lower()}://{url_host(parts.hostname or '')}{port}"


def same_server(url: str, other: str | None) -> bool:
    """Whether two base URLs name the same server (scheme, host and port)."""
    if not other:
        return False
    a, b = urlsplit(url.strip()), urlsplit(other.strip())
    try:
        ports = (a.port, b.port)
    except ValueError:  # not a port number: no server to match
        return False
    return (a.scheme.lower(), a.hostname, ports[0] or DEFAULT_PORTS.get(a.scheme.lower())) == (
        b.scheme.lower(),
        b.hostname,
        ports[1] or DEFAULT_PORTS.get(b.scheme.lower()),
    )
