"""How long to wait after consecutive failures: the one backoff of the engine, the mobility service
and the console."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays (seconds) after the 1st, 2nd, … consecutive failure; the last one repeats."""

    steps: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.steps or any(b < a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("backoff steps must be a non-empty, non-decreasing sequence")

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` failures so far, counted from 0)."""
        return self.steps[min(max(attempt, 0), len(self.steps) - 1)]

    @property
    def longest(self) -> float:
        return self.steps[-1]
