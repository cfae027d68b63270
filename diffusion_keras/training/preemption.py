"""Stopping a run on SIGTERM at a step boundary, so that it can be resumed exactly.

SIGTERM is what clouds, batch schedulers, Colab and `kill` send before they
kill a process. `stop_signal()` is the process's one `StopSignal`: once it is
installed (`train.py` does so before TensorFlow loads), SIGTERM only sets a
flag. The training loop reads the flag after each step; the checkpointer then
writes the run's position and training ends with `Preempted`, which `train.py`
turns into one line and exit status 143 (128 + SIGTERM, what a shell reports
for a process that SIGTERM ended).

In a multi-worker run the workers must stop at the same step: each step
all-reduces the workers' flags (`fit_multiworker`), and `agreed` then holds
the result, which is what `should_stop` reads.

This module does not import TensorFlow.
"""

import contextlib
import signal
import sys
import threading

EXIT_PREEMPTED = 128 + signal.SIGTERM


class StopSignal:
    """A flag that SIGTERM sets, read at step boundaries."""

    def __init__(self):
        self.requested = False
        self.agreed = None  # set by a multi-worker loop: the all-workers answer
        self._previous = None
        self._installed = False

    @property
    def installed(self):
        return self._installed

    def install(self):
        """Handles SIGTERM from now on (from the main thread only; elsewhere
        a no-op that returns False)."""
        if self._installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        return True

    def reinstall(self):
        """Installs the handler again if it was installed: TensorFlow's
        multi-worker runtime registers its own SIGTERM handler in C++
        (its preemption notifier), which Python's `signal.getsignal` does not
        see and which would otherwise swallow the signal."""
        if self._installed:
            signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self):
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            self._installed = False

    @contextlib.contextmanager
    def handled(self):
        """SIGTERM handled within the block (a training run), and afterwards
        as before: installed only for the block unless it was already, and
        the flag cleared, so that the next run in this process starts afresh."""
        installed_here = not self._installed and self.install()
        try:
            yield self
        finally:
            if installed_here:
                self.uninstall()
            self.reset()

    def _handle(self, signum, frame):
        self.requested = True

    def request(self):
        """What SIGTERM does: asks the run to stop at the next step boundary."""
        self.requested = True

    def should_stop(self):
        """True when this step is the last: this process was asked to stop,
        or, in a multi-worker run, any worker was."""
        return bool(self.requested if self.agreed is None else self.agreed)

    def reset(self):
        self.requested = False
        self.agreed = None


_SIGNAL = StopSignal()


def stop_signal():
    """The process's `StopSignal`."""
    return _SIGNAL


@contextlib.contextmanager
def interrupts_noted():
    """Within the block, Ctrl-C raises `KeyboardInterrupt` as usual but is
    also noted in the yielded list. A KeyboardInterrupt that lands inside a
    library (say, while TensorFlow traces a function) can come out as another
    error; the caller then still knows that the user asked to stop. Outside
    the main thread, or when a program has its own SIGINT handler, the
    handler is left alone. A noted Ctrl-C that lands where Python can only
    print an exception (a garbage-collector callback, a `__del__`) is not
    printed."""
    noted = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield noted
        return

    def handle(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    previous_hook = sys.unraisablehook

    def quiet_noted_interrupt(unraisable):
        # A noted Ctrl-C whose KeyboardInterrupt Python could not raise (it
        # landed in a garbage-collector callback or a `__del__`) is not an
        # error to print: the caller acts on `noted` (`NotedInterrupt`).
        if noted and issubclass(unraisable.exc_type, KeyboardInterrupt):
            return
        previous_hook(unraisable)

    signal.signal(signal.SIGINT, handle)
    sys.unraisablehook = quiet_noted_interrupt
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
