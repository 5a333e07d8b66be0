"""torch reference runs in a separate process, so that a crashing kernel is a finding.

Some of torch's CPU kernels end the process on some shapes: on a Xeon with
AVX512-FP16, torch 2.13's oneDNN float16 convolution segfaults for a few
small strided and dilated shapes (docs/hardware.md).  Called in the test
process, such a kernel kills the whole suite.  :class:`TorchWorker` runs the
calls in one long-lived child process instead (started with ``spawn``: a
forked child of a process that ran OpenMP regions may hang in its own), with
the parent's torch thread count.  When the child dies, the call raises
:class:`KernelCrash` naming the signal, and the next call starts a new child.

Only module-level functions of importable modules can be sent (they are
pickled by name); their arguments and results must pickle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class KernelCrash(RuntimeError):
    """The child process died while running a call (a kernel ended the process)."""


def _serve(conn: Connection, threads: int) -> None:
    import torch  # noqa: PLC0415 - the child's own import

    torch.set_num_threads(threads)
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:  # the parent went away
            return
        try:
            conn.send((True, fn(*args)))
        except Exception as exc:  # noqa: BLE001 - an error is the caller's, raised there
            conn.send((False, exc))


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class TorchWorker:
    """A child process that runs ``fn(*args)`` and returns its result."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        import torch  # noqa: PLC0415

        self.close()  # a child that ended between calls: its pipe too
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, torch.get_num_threads()),
                                 daemon=True)  # fmt: skip
        self._proc.start()
        child.close()
        self._conn = parent
        return parent

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        alive = self._conn is not None and self._proc.is_alive()
        conn = self._conn if alive else self._start()
        try:
            conn.send((fn, args))
            ok, value = conn.recv()
        except (EOFError, ConnectionError, BrokenPipeError) as exc:
            self._proc.join(timeout=10)
            code = self._proc.exitcode
            self.close()
            raise KernelCrash(f"torch process ended ({_signal_name(code)}) in "
                              f"{getattr(fn, '__name__', fn)}") from exc  # fmt: skip
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)
        self._proc = self._conn = None


_WORKER = TorchWorker()


def in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the shared worker process (:class:`TorchWorker`)."""
    return _WORKER.call(fn, *args)


def abort_for_test(code: int = signal.SIGSEGV) -> None:
    """End the calling process by a signal (the tests' stand-in for a crashing kernel)."""
    os.kill(os.getpid(), code)
