"""StopRequest: the first SIGTERM/SIGINT sets a flag, a second one acts at once, and the
handlers before it come back afterwards."""

import os
import signal

import pytest

from preftune.train.signals import StopRequest


def no_reduce(tensor):
    return tensor


def test_first_signal_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.requested(no_reduce) is None
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the flag
        assert stop.requested(no_reduce) == signal.SIGTERM
        assert StopRequest.exit_code(stop.signum) == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_interrupts_at_once():
    # Python's own SIGINT handler first: a process started in the background by a
    # non-interactive shell begins with SIGINT ignored, and that is what a second signal
    # would then fall back to.
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, started_with)
