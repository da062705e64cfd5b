"""Model prices (USD per 1M input and output tokens) for the cost figures of a shadow report.

The bundled table (``shadow/prices.toml``) holds providers' list prices; a user's TOML file of
the same shape adds models or replaces entries (a self-hosted model's price is what its GPUs cost
per token, which only its owner knows).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from shadow.errors import TerminalShadowError

__all__ = ["ModelPrice", "PriceTable", "load_prices"]


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M prompt (input) and completion (output) tokens."""

    input: float
    output: float

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for one request of these sizes."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name (as the endpoint serves it)."""

    models: Mapping[str, ModelPrice]

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def get(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or None when the table does not know it."""
        return self.models.get(model)

    def cost(self, model: str, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for one request on ``model``; NaN when its price is unknown."""
        price = self.get(model)
        return math.nan if price is None else price.cost(prompt_tokens, completion_tokens)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries added or replacing ours."""
        return PriceTable({**self.models, **other.models})


def _parse(text: str, source: str) -> PriceTable:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TerminalShadowError(f"{source} is not valid TOML: {e}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise TerminalShadowError(f"{source}: [models] must be a table of models")
    prices = {}
    for name, entry in models.items():
        try:
            price = ModelPrice(float(entry["input"]), float(entry["output"]))
        except (KeyError, TypeError, ValueError):
            raise TerminalShadowError(
                f'{source}: [models."{name}"] needs numbers `input` and `output` '
                "(USD per 1M tokens)"
            ) from None
        if price.input < 0 or price.output < 0:
            raise TerminalShadowError(f'{source}: [models."{name}"] has a negative price')
        prices[name] = price
    return PriceTable(prices)


def load_prices(path: Path | str | None = None, *, bundled: bool = True) -> PriceTable:
    """The bundled price table, with the entries of the TOML file at ``path`` added or
    replacing ours (``bundled=False``: that file's entries only)."""
    table = PriceTable({})
    if bundled:
        text = resources.files("shadow").joinpath("prices.toml").read_text(encoding="utf-8")
        table = _parse(text, "the bundled shadow/prices.toml")
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise TerminalShadowError(f"cannot read the price file {p}: {e}") from None
        table = table.merged(_parse(text, str(p)))
    return table
