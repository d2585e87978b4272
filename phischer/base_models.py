"""OpenAI's fine-tunable base models: dated training prices, example limits, default epochs."""

from __future__ import annotations

DEFAULT_BASE_MODEL = "gpt-4.1-mini-2025-04-14"

# OpenAI fine-tuning training prices, USD per 1M training tokens (supervised), as listed
# on https://openai.com/api/pricing on the date below. Prices change: check before a big job.
PRICES_AS_OF = "2025-06-01"
PRICES: dict[str, float] = {
    "gpt-4.1-2025-04-14": 25.00,
    "gpt-4.1-mini-2025-04-14": 5.00,
    "gpt-4.1-nano-2025-04-14": 1.50,
    "gpt-4o-2024-08-06": 25.00,
    "gpt-4o-mini-2024-07-18": 3.00,
}
# Undated aliases OpenAI accepts for fine-tuning, pointing at the snapshot they train
# (gpt-3.5-turbo: its current snapshot, so its 16,385-token limit applies, not the default).
ALIASES: dict[str, str] = {
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
}
# Longest training example (tokens) per base model, from OpenAI's fine-tuning guide on the
# same date; longer examples are truncated to this length (and billed only up to it).
CONTEXT_LIMITS: dict[str, int] = {
    "gpt-4.1-2025-04-14": 65_536,
    "gpt-4.1-mini-2025-04-14": 65_536,
    "gpt-4.1-nano-2025-04-14": 65_536,
    "gpt-4o-2024-08-06": 65_536,
    "gpt-4o-mini-2024-07-18": 65_536,
    "gpt-3.5-turbo-0125": 16_385,
    "gpt-3.5-turbo-1106": 16_385,
    "gpt-3.5-turbo-0613": 4_096,
}
DEFAULT_CONTEXT_LIMIT = 65_536

# The cookbook's default-epochs rule (what OpenAI picks when n_epochs is "auto").
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

MIN_EXAMPLES = 10  # OpenAI rejects training files with fewer examples.
# OpenAI's files API takes files of up to 512 MB: a bigger one would upload for minutes, then fail.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def default_epochs(n_examples: int) -> int:
    """Epochs OpenAI trains for by default: aim for 3 × n in [100, 25,000] example passes."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def canonical_model(model: str) -> str:
    """The dated base model behind an alias or a fine-tuned id (`ft:BASE:org::id`)."""
    # OpenAI's model ids are lower case; the tokenizer reads "GPT-4o-mini" as gpt-4o-mini,
    # so the price and limit must too.
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return ALIASES.get(name, name)


def price_per_million(model: str) -> float | None:
    """Training USD per 1M tokens for a base model, or None when not in the table."""
    return PRICES.get(canonical_model(model))


def context_limit(model: str) -> int | None:
    """The longest training example for a base model, or None when not in the table."""
    return CONTEXT_LIMITS.get(canonical_model(model))


def estimate_cost(billed_tokens: int, model: str) -> float | None:
    """Training cost in USD for tokens already multiplied by epochs (None: unknown model)."""
    price = price_per_million(model)
    return None if price is None else billed_tokens * price / 1_000_000
