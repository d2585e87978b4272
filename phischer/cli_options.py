"""Click options that mean the same in several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# OpenAI accepts 1 to 50 epochs; the local trainer takes the same range.
EPOCHS = click.IntRange(1, 50)


def base_model_option(help: str, default: str | None = None) -> Decorator:
    """`--base-model`: the model to fine-tune; a default, when given, is shown in --help."""
    return click.option(
        "--base-model", default=default, show_default=default is not None, help=help
    )


def epochs_option(help: str) -> Decorator:
    """`--epochs`: passes over the training data, 1 to 50; unset means the provider's rule."""
    return click.option("--epochs", type=EPOCHS, help=help)
