"""The per-user throttle: a sliding one-minute window, one notice per window, bounded memory."""

from __future__ import annotations

from core import throttle as throttle_module
from core.throttle import WINDOW_S, Throttle


def test_the_limit_is_per_user_and_the_user_is_told_once_per_window() -> None:
    limiter = Throttle(per_minute=3)
    assert [limiter.hit(1, now_s=t).allowed for t in (0.0, 1.0, 2.0)] == [True, True, True]
    refused = limiter.hit(1, now_s=3.0)
    assert (refused.allowed, refused.notify, refused.recent) == (False, True, 3)
    again = limiter.hit(1, now_s=4.0)
    assert (again.allowed, again.notify) == (False, False)  # told already in this window
    assert limiter.hit(2, now_s=4.0).allowed  # another user has a window of their own


def test_the_window_slides() -> None:
    limiter = Throttle(per_minute=2)
    limiter.hit(1, now_s=0.0)
    limiter.hit(1, now_s=30.0)
    assert not limiter.hit(1, now_s=59.9).allowed
    # The first hit leaves the window at 60 s: one more is allowed, not the whole quota.
    assert limiter.hit(1, now_s=60.0).allowed
    assert not limiter.hit(1, now_s=61.0).allowed
    # Refused hits do not count: once the window has passed, the user is allowed (and told again later).
    later = limiter.hit(1, now_s=30.0 + 2 * WINDOW_S)
    assert later.allowed and later.recent == 1


def test_a_refused_user_is_told_again_in_the_next_window() -> None:
    limiter = Throttle(per_minute=1)
    limiter.hit(1, now_s=0.0)
    assert limiter.hit(1, now_s=1.0).notify
    limiter.hit(1, now_s=WINDOW_S + 0.5)  # allowed: the first hit left the window
    assert limiter.hit(1, now_s=WINDOW_S + 2.0).notify  # a minute after the last notice


def test_zero_turns_it_off() -> None:
    limiter = Throttle(per_minute=0)
    assert all(limiter.hit(1, now_s=0.0).allowed for _ in range(1000))


def test_idle_users_are_forgotten_when_the_table_is_full(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(throttle_module, "MAX_TRACKED_USERS", 3)
    limiter = Throttle(per_minute=5)
    for user in (1, 2, 3):
        limiter.hit(user, now_s=0.0)
    limiter.hit(3, now_s=61.0)  # user 3 is active again
    limiter.hit(4, now_s=70.0)  # the table is full: users idle for a window leave it
    assert set(limiter._hits) == {3, 4}
