"""What /readyz answers, from the process's own state: role, database wait, lag."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.service.readiness import Readiness, Role

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def readiness(role: Role, block_age_s: float | None = None, max_lag_s: float = 60.0) -> Readiness:
    ready = Readiness(max_lag_s, clock=lambda: NOW)
    ready.role = role
    if block_age_s is not None:
        block_time = datetime.fromtimestamp(NOW - block_age_s, tz=UTC).replace(tzinfo=None)
        ready.positioned(block_time)
    return ready


@pytest.mark.parametrize(
    ("role", "block_age_s", "verdict"),
    [
        (Role.STARTING, None, (False, "starting")),
        (Role.RECONNECTING, 5.0, (False, "reconnecting")),
        (Role.STANDBY, None, (True, "standby: another instance holds the writer lock")),
        (Role.LEADER, None, (False, "lag nan s over 60 s")),
        (Role.LEADER, 12.5, (True, "leader, lag 12.5 s")),
        (Role.LEADER, 60.0, (True, "leader, lag 60.0 s")),
        (Role.LEADER, 61.0, (False, "lag 61.0 s over 60 s")),
        (Role.LEADER, -3.0, (True, "leader, lag 0.0 s")),  # a block time ahead of our clock
    ],
)
def test_the_verdict_follows_the_role_and_the_lag_of_the_last_committed_block(
    role: Role, block_age_s: float | None, verdict: tuple[bool, str]
) -> None:
    assert readiness(role, block_age_s).verdict() == verdict


def test_waiting_on_the_database_is_not_ready_whatever_the_role_and_says_what_it_waits_for() -> (
    None
):
    for role in Role:
        ready = readiness(role, block_age_s=1.0)
        ready.waiting.begin("the database: connection refused")
        assert ready.verdict() == (False, "the database: connection refused")
        ready.waiting.end()
        assert ready.verdict()[1] != "the database: connection refused"


def test_a_commit_without_a_block_time_keeps_the_last_known_one() -> None:
    ready = readiness(Role.LEADER, block_age_s=10.0)
    ready.positioned(None)
    assert ready.verdict() == (True, "leader, lag 10.0 s")


def test_lag_keeps_rising_while_nothing_commits() -> None:
    clock = [NOW]
    ready = Readiness(60.0, clock=lambda: clock[0])
    ready.role = Role.LEADER
    ready.positioned(datetime.fromtimestamp(NOW, tz=UTC).replace(tzinfo=None))
    assert ready.verdict()[0]
    clock[0] += 61.0
    assert ready.verdict() == (False, "lag 61.0 s over 60 s")
