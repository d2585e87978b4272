#!/usr/bin/env python
"""Open an ngrok tunnel and point your Twilio number at it: the same as `phischer tunnel`.

python scripts/tunnel.py [-v] [--port 5000] [--public-url URL] [--no-restore]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# phischer.cli first: it imports and registers the command modules (no import cycle).
from phischer.cli import configure_logging  # noqa: E402
from phischer.cli_tunnel import tunnel_command  # noqa: E402
from phischer.redact import install_output  # noqa: E402

VERBOSE = ("-v", "--verbose")


def main(argv: list[str] | None = None) -> None:
    """Run `phischer tunnel` with these arguments (and `phischer -v`'s logging set-up)."""
    args = sys.argv[1:] if argv is None else argv
    # Its `Error:` lines do not pass the `phischer` group, which hides the secrets in them.
    install_output()
    configure_logging(any(a in VERBOSE for a in args))
    tunnel_command.main(args=[a for a in args if a not in VERBOSE], prog_name="scripts/tunnel.py")


if __name__ == "__main__":
    main()
