"""The delay before a failed delivery is attempted again: exponential, jittered, capped."""

from __future__ import annotations

import math
import random

from vebus.config import Backoff

__all__ = ["backoff_delay"]


def backoff_delay(
    policy: Backoff,
    attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after attempt number `attempt` (1-based) failed.

    The base delay is `initial * multiplier ** (attempt - 1)`, capped at `max`; the delay
    is drawn from `[base * (1 - jitter), base]`. A `retry_after` the sink asked for wins
    when it is longer, but never past `max`.
    """
    cap = float(policy.max)
    try:
        base = min(float(policy.initial) * policy.multiplier ** max(attempt - 1, 0), cap)
    except OverflowError:
        base = cap
    uniform = rng.uniform if rng is not None else random.uniform
    delay = uniform(base * (1.0 - policy.jitter), base)
    if retry_after is not None and math.isfinite(retry_after) and retry_after > delay:
        delay = retry_after
    return max(0.0, min(delay, cap))
