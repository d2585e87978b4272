#!/usr/bin/env python
"""Open an ngrok tunnel and point your Twilio number at it: the same as `phischer tunnel`.

python scripts/tunnel.py [--port 5000] [--public-url URL] [--no-restore]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# phischer.cli first: it imports and registers the command modules (no import cycle).
import phischer.cli  # noqa: E402, F401
from phischer.cli_tunnel import tunnel_command  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Run `phischer tunnel` with these arguments."""
    tunnel_command.main(args=argv, prog_name="scripts/tunnel.py")


if __name__ == "__main__":
    main()
