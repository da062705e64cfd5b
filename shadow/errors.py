"""Shadow-replay exceptions.

::

    ShadowError                    root: anything the shadow package raises
    ├── TransientShadowError       a retry can help (timeout, 429, 5xx, dropped connection)
    └── TerminalShadowError        a retry cannot help (bad request, unknown model, bad config)
        └── BudgetExhaustedError   the run reached its request or token budget
"""

from __future__ import annotations

__all__ = [
    "BudgetExhaustedError",
    "ShadowError",
    "TerminalShadowError",
    "TransientShadowError",
]


class ShadowError(Exception):
    """Root of every error the shadow package raises."""


class TransientShadowError(ShadowError):
    """The request may succeed if sent again (timeouts, 429/5xx, connection errors)."""


class TerminalShadowError(ShadowError):
    """Sending the request again will not help."""


class BudgetExhaustedError(TerminalShadowError):
    """The run's request or token budget is spent; the run stops cleanly and can be resumed."""
