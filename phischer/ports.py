"""Binding the server's port ourselves, so a busy port is one clear line, not a log storm."""

from __future__ import annotations

import socket


class PortBusyError(ValueError):
    """The port cannot be listened on (another program has it, or no permission)."""


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or PortBusyError saying what to do."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise PortBusyError(
            f"Cannot listen on {host}:{port} ({exc.strerror}): stop the program using it "
            f"or pass --port N"
        ) from None
    return sock
