"""Backoff: capped exponential delays with bounded jitter."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from consumer.backoff import Backoff, Retry


def test_next_delay_grows_by_the_factor_from_the_initial_delay() -> None:
    backoff = Backoff(initial_s=0.1, factor=2.0, cap_s=100.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_next_delay_levels_off_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, factor=2.0, cap_s=1.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_next_delay_never_exceeds_the_cap(jitter: float) -> None:
    backoff = Backoff(initial_s=0.1, factor=3.0, cap_s=2.0, jitter=jitter, rng=random.Random(1))
    assert max(backoff.next_delay() for _ in range(200)) <= 2.0


def test_next_delay_stays_at_the_cap_through_a_very_long_outage() -> None:
    # factor ** attempts overflows a float after ~1024 doublings: an outage of
    # a few hours at a 10 s cap must not crash the retry loop.
    backoff = Backoff(initial_s=0.1, factor=2.0, cap_s=10.0, jitter=0.0)
    delays = [backoff.next_delay() for _ in range(5000)]
    assert delays[-1] == 10.0


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_jitter_keeps_each_delay_between_its_floor_and_its_base(jitter: float) -> None:
    backoff = Backoff(initial_s=1.0, factor=2.0, cap_s=8.0, jitter=jitter, rng=random.Random(7))
    bases = [min(8.0, 2.0**attempt) for attempt in range(50)]
    delays = [backoff.next_delay() for _ in bases]
    assert all(
        base * (1.0 - jitter) <= delay <= base for base, delay in zip(bases, delays, strict=True)
    )


def test_jitter_spreads_delays_at_the_cap() -> None:
    backoff = Backoff(initial_s=1.0, cap_s=1.0, jitter=0.5, rng=random.Random(3))
    assert len({backoff.next_delay() for _ in range(20)}) > 1


def test_reset_starts_over_from_the_initial_delay() -> None:
    backoff = Backoff(initial_s=0.1, factor=2.0, cap_s=10.0, jitter=0.0)
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


async def test_wait_sleeps_for_the_delay_it_returns() -> None:
    slept: list[float] = []

    async def record(delay: float) -> None:
        slept.append(delay)

    backoff = Backoff(initial_s=0.1, cap_s=1.0, jitter=0.5, sleep=record, rng=random.Random(5))
    returned = [await backoff.wait() for _ in range(3)]
    assert slept == returned


class Recorder:
    """An injected sleep that records delays instead of waiting."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_retry_pauses_for_the_backoffs_delays() -> None:
    sleep = Recorder()
    retry = Retry(Backoff(initial_s=0.1, cap_s=1.0, jitter=0.0, sleep=sleep))
    assert [await retry.pause() for _ in range(3)] == [True, True, True]
    assert sleep.slept == pytest.approx([0.1, 0.2, 0.4])


async def test_retry_gives_up_without_waiting_once_stop_is_set() -> None:
    stop = asyncio.Event()
    stop.set()
    retry = Retry(Backoff(initial_s=100.0, cap_s=100.0), stop)
    assert await retry.pause() is False
    assert retry.backoff.attempts == 0


async def test_retry_gives_up_without_waiting_once_the_deadline_has_passed() -> None:
    sleep = Recorder()
    retry = Retry(Backoff(sleep=sleep))
    assert await retry.pause(deadline=time.monotonic() - 1) is False
    assert sleep.slept == []


async def test_retry_never_waits_past_the_deadline() -> None:
    sleep = Recorder()
    retry = Retry(Backoff(initial_s=100.0, cap_s=100.0, jitter=0.0, sleep=sleep))
    assert await retry.pause(deadline=time.monotonic() + 5) is True
    assert 0 < sleep.slept[0] <= 5


async def test_stop_during_a_pause_ends_it() -> None:
    stop = asyncio.Event()
    retry = Retry(Backoff(initial_s=100.0, cap_s=100.0), stop)
    pause = asyncio.create_task(retry.pause())
    await asyncio.sleep(0)
    stop.set()
    assert await pause is False


async def test_a_pause_cancelled_as_stop_is_set_is_still_cancelled() -> None:
    # SIGTERM sets stop and the session's tasks are cancelled in the same turn of
    # the loop: the cancellation must reach the retrying task, not be swallowed.
    stop = asyncio.Event()
    retry = Retry(Backoff(initial_s=100.0, cap_s=100.0), stop)
    pause = asyncio.create_task(retry.pause())
    await asyncio.sleep(0)
    stop.set()
    pause.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pause
