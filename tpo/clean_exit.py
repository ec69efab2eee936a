"""Every process we start ends with its own exit status, whatever library threads do at shutdown.

At interpreter finalisation, gloo's worker threads can still hold work objects whose tensors carry
Python references (pytorch/pytorch#179291); tearing them down aborts a process that had finished
("terminate called without an active exception", status -6), even after ``destroy_process_group()``.
A training job would then be marked failed by its scheduler after hours of good work.

So our entry points (``python -m tpo``, ``tpo``, ``python -m tpo.evaluate``, ``python -m data_gen``,
the benchmark scripts and their workers) end through :func:`run_and_exit`: the program's status is
decided, ``atexit`` handlers run, standard streams and logging handlers are flushed, and the process
leaves with ``os._exit`` before the interpreter tears anything down. Files the program wrote are
closed by then: we write through ``with`` blocks, and Lightning's loggers close at the end of fit.
Non-daemon Python threads are not waited for (normal shutdown would join them): our programs
start none that outlive ``main``.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn

INTERRUPTED = 130  # the shell's status for Ctrl-C (128 + SIGINT)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what a scheduler (SLURM) sends before it kills a job


def exit_status(err: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give: None is 0, an int is itself, anything else is printed and 1."""
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)
    return 1


def flush_and_exit(status: int) -> NoReturn:
    """Leave now with ``status``: atexit handlers, logging and standard streams first, no finalisation."""
    try:  # internal: the only way to run the atexit handlers before os._exit, which skips them
        atexit._run_exitfuncs()
    except BaseException:  # an atexit handler's failure must not change the program's status
        traceback.print_exc()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or gone (a pipe whose reader left)
            pass
    os._exit(status)


class StopSignals:
    """SIGINT and SIGTERM for a program that can stop cleanly at safe points (``tpo fit`` between steps).

    Inside ``with StopSignals() as signals:`` a signal stops the program at once (``KeyboardInterrupt``), unless
    ``signals.deferred`` is on: then the first one only sets ``signals.received``, for the program to stop at its
    next safe point, and a second one stops it at once. Either way the program should end with
    ``signals.status``: 128 + the signal, the status a shell gives a process that signal ended (130, 143).
    """

    def __init__(self):
        self.received: int | None = None
        self.deferred = False
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}

    @property
    def status(self) -> int | None:
        return None if self.received is None else 128 + self.received

    def install(self) -> None:
        """(Re)install the handlers: a library (Lightning) may have put its own in front of them."""
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for signum in STOP_SIGNALS:
                self._previous.setdefault(signum, signal.signal(signum, self._handle))

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the training process decides when to stop
            return
        first = self.received is None
        if first:
            self.received = signum
        if not (first and self.deferred):
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def run_and_exit(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main()`` and leave with its status: its return value (None is 0), its ``SystemExit``, 1 for
    an uncaught exception (traceback printed), 130 for Ctrl-C."""
    try:
        status = main() or 0
    except SystemExit as err:
        status = exit_status(err)
    except KeyboardInterrupt:
        status = INTERRUPTED
    except BaseException:
        traceback.print_exc()
        status = 1
    flush_and_exit(status)
