"""`python -m phischer` runs the CLI."""

from phischer.cli import main

main()
