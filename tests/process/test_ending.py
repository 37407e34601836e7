"""The decision table of one shutdown's ending, with a fake clock: no processes, no signals sent."""

from __future__ import annotations

import signal

from sessionstore.process._ending import Action, Ending, State

INT, TERM, QUIT, HUP = signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_signal_requests_and_one_claim_wins() -> None:
    """A signal requests; exactly one claimant runs it, and keeps the signal as the cause."""
    ending = Ending()
    assert ending.hear(INT) == [Action.START]
    assert ending.state is State.REQUESTED
    assert ending.claim("atexit") is True
    assert ending.claim("") is False and ending.claim("explicit") is False
    assert ending.cause == "SIGINT" and ending.signum == INT


def test_first_sigint_after_an_atexit_start_is_adopted_not_escalated() -> None:
    """The first SIGINT during an atexit shutdown makes it signal-caused; the grace stays."""
    ending = Ending()
    assert ending.claim("atexit")
    assert ending.hear(INT) == [Action.ADOPT]
    assert ending.escalations == 0 and ending.signum == INT and ending.cause == "SIGINT"
    assert ending.hear(INT) == [Action.CUT]
    assert ending.hear(INT) == [Action.HARD]


def test_sigquit_means_now() -> None:
    """A first SIGQUIT starts the shutdown and cuts the grace at once; the next exits."""
    ending = Ending()
    assert ending.hear(QUIT) == [Action.START, Action.CUT]
    assert ending.hear(INT) == [Action.HARD]


def test_repeated_sigterm_cuts_the_grace_but_never_exits_at_once() -> None:
    """SIGTERM again cuts the grace (default); more SIGTERMs change nothing."""
    ending = Ending()
    assert ending.hear(TERM) == [Action.START]
    assert ending.hear(TERM) == [Action.CUT]
    assert ending.hear(TERM) == [Action.IGNORE]
    assert ending.hear(INT) == [Action.HARD]


def test_repeated_sigterm_ignored_when_the_option_is_off() -> None:
    """With repeated_sigterm_skips_grace=False a second SIGTERM changes nothing."""
    ending = Ending(repeated_sigterm_skips_grace=False)
    assert ending.hear(TERM) == [Action.START]
    assert ending.hear(TERM) == [Action.IGNORE]
    assert ending.hear(HUP) == [Action.IGNORE]


def test_signal_after_the_decision_is_late_and_passed_on_once() -> None:
    """After the final state of a non-signal shutdown, a signal changes nothing and is handed on."""
    ending = Ending()
    assert ending.claim("explicit")
    ending.decide()
    assert ending.hear(TERM) == [Action.LATE]
    assert ending.signum is None and ending.cause == "explicit"
    assert ending.take_late() == [TERM]
    assert ending.take_late() == []
    ending.finish()
    assert ending.hear(TERM) == [Action.NONE]


def test_escalation_still_works_after_the_decision() -> None:
    """A signal-caused shutdown writing its final state still obeys a third SIGINT."""
    ending = Ending()
    ending.hear(INT)
    ending.claim("")
    ending.hear(INT)
    ending.decide()
    assert ending.hear(INT) == [Action.HARD]


def test_app_handler_is_due_once() -> None:
    """The causing signal's app handler is handed out once, and only once there is a cause."""
    ending = Ending()
    ending.claim("atexit")
    assert ending.take_chain() is None
    ending.hear(HUP)
    assert ending.take_chain() == HUP
    assert ending.take_chain() is None


def test_watchdog_fires_only_for_a_signal_caused_overrun() -> None:
    """overdue() names the signal once a signal-caused sequence outlasts its budget."""
    clock = FakeClock()
    quiet = Ending(clock=clock)
    quiet.claim("explicit")
    clock.now += 1000
    assert quiet.overdue(10) is None  # no signal: nobody is waiting with a SIGKILL
    ending = Ending(clock=clock)
    ending.hear(TERM)
    clock.now += 10
    assert ending.overdue(10) is None
    assert ending.remaining_s(30) == 20
    clock.now += 0.5
    assert ending.overdue(10) == TERM
    ending.finish()
    assert ending.overdue(10) is None


def test_hard_exit_begins_once_and_ends_by_the_first_signal() -> None:
    """Two threads asking to exit at once: one proceeds, with the signal that caused it."""
    ending = Ending()
    ending.hear(TERM)
    assert ending.begin_hard_exit(INT) == (True, False, TERM)
    assert ending.begin_hard_exit(INT)[0] is False


def test_atexit_claims_unless_it_already_started() -> None:
    """When no thread can start, the request waits for atexit only if atexit is still to come."""
    ending = Ending()
    assert ending.at_exit_will_claim(registered=True)
    assert not ending.at_exit_will_claim(registered=False)
    ending.mark_at_exit()
    assert not ending.at_exit_will_claim(registered=True)
