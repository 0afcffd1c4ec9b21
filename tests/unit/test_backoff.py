"""Unit tests for the dispatcher's retry delay: exponential, jittered, capped, Retry-After."""

from __future__ import annotations

import random

import pytest

from vebus.config import Backoff, Duration
from vebus.delivery.backoff import backoff_delay


def policy(
    initial: float = 1, max: float = 300, multiplier: float = 2, jitter: float = 0.2
) -> Backoff:
    return Backoff(
        initial=Duration(initial), max=Duration(max), multiplier=multiplier, jitter=jitter
    )


def test_without_jitter_the_delay_doubles_from_initial_until_max() -> None:
    p = policy(initial=1, max=20, jitter=0)
    assert [backoff_delay(p, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]


def test_jitter_draws_from_the_lower_part_of_the_interval() -> None:
    p = policy(initial=10, max=1000, jitter=0.2)
    rng = random.Random(42)
    delays = [backoff_delay(p, 3, rng=rng) for _ in range(2000)]
    assert all(32.0 <= d <= 40.0 for d in delays)  # base 40, drawn from [40 * 0.8, 40]
    assert min(delays) < 33  # the whole interval is used
    assert max(delays) > 39


def test_a_seeded_random_gives_the_same_delays() -> None:
    p = policy()
    first = [backoff_delay(p, n, rng=random.Random(7)) for n in range(1, 6)]
    again = [backoff_delay(p, n, rng=random.Random(7)) for n in range(1, 6)]
    assert first == again
    r = random.Random(7).random()  # the one draw each call makes, from the same seed
    expected = [base * (0.8 + 0.2 * r) for base in (1, 2, 4, 8, 16)]
    assert first == pytest.approx(expected)


def test_retry_after_wins_when_longer_and_is_capped_at_max() -> None:
    p = policy(initial=0.05, max=30, jitter=0)
    assert backoff_delay(p, 1, retry_after=5) == 5
    assert backoff_delay(p, 1, retry_after=0.01) == 0.05  # shorter: the backoff stands
    assert backoff_delay(p, 1, retry_after=3600) == 30


def test_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    p = policy(initial=1, max=300, multiplier=10, jitter=0)
    assert backoff_delay(p, 100_000) == 300


def test_multiplier_one_is_a_constant_delay() -> None:
    p = policy(initial=2, multiplier=1, jitter=0)
    assert {backoff_delay(p, n) for n in range(1, 50)} == {2}
