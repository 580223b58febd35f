"""The guard's rule, alone: which changes would leave Envoys serving nothing."""

from __future__ import annotations

import pytest

from xgate.guard import OPT_IN, Served, held_back_message, hold_back


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # Nothing served yet: a config without a listener has nothing to serve; one without routes may get them later.
        (None, Served(0, 0), "it has no listener"),
        (None, Served(1, 0), None),
        (None, Served(1, 5), None),
        # From a served config.
        (Served(2, 10), Served(0, 0), "it removes every listener (2 served)"),
        (Served(1, 10), Served(1, 0), "it removes every route (10 served)"),
        (Served(1, 10), Served(1, 1), None),
        (Served(1, 10), Served(3, 10), None),
        (Served(2, 10), Served(1, 10), None),  # one listener of two: a change like any other
        (Served(1, 0), Served(1, 0), None),  # no routes before either: nothing is removed
        (Served(1, 0), Served(0, 0), "it removes every listener (1 served)"),
    ],
)
def test_hold_back(before: Served | None, after: Served, expected: str | None) -> None:
    reason = hold_back(before, after)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected), reason


def test_the_message_says_what_stays_and_how_to_opt_in() -> None:
    message = held_back_message("it has no listener")
    assert message.startswith("held back: it has no listener;")
    assert "last good config keeps serving" in message and OPT_IN in message
