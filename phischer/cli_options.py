"""Click options that mean the same in several commands, defined once."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# OpenAI accepts 1 to 50 epochs; the local trainer takes the same range.
EPOCHS = click.IntRange(1, 50)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that refuses 'nan' too (it passes every bound) like any out-of-range value."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The float, or click's usage error for a non-number, one out of range, nan or inf."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def base_model_option(help: str, default: str | None = None) -> Decorator:
    """`--base-model`: the model to fine-tune; a default, when given, is shown in --help."""
    return click.option(
        "--base-model", default=default, show_default=default is not None, help=help
    )


def epochs_option(help: str) -> Decorator:
    """`--epochs`: passes over the training data, 1 to 50; unset means the provider's rule."""
    return click.option("--epochs", type=EPOCHS, help=help)


class OrBlank(click.ParamType):
    """`inner`'s values, or a blank value as '' (what `persona edit` reads as "clear it")."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """'' for a blank value, else what `inner` makes of it (its usage error included)."""
        if isinstance(value, str) and not value.strip():
            return ""
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        """The metavar `inner` shows in --help."""
        return self.inner.get_metavar(param, ctx)

    def __repr__(self) -> str:
        return f"OrBlank({self.inner!r})"


class OrBlankOption(click.Option):
    """An option typed OrBlank whose --help still shows its inner range, as `persona add`'s."""

    def get_help_extra(self, ctx: click.Context) -> Any:
        """click's help extras, plus the inner type's range (click looks at the outer type)."""
        extra = super().get_help_extra(ctx)
        inner = getattr(self.type, "inner", None)
        if isinstance(inner, click.IntRange | click.FloatRange):
            extra["range"] = inner._describe_range()
        return extra
