"""Child processes for torch work: proxy-training workers, deployment nodes, calibrations.

A child started with multiprocessing's ``spawn`` method is a fresh interpreter that imports
torch and the project again: 1.5-2 s each to start on two cores, for work that often takes less
(a deployment's node, a search's pool of workers). Where the platform has it (Linux, macOS),
children are forked instead from multiprocessing's fork server, one per parent process, which
imports :data:`PRELOAD` and the modules its callers name once, when it starts: a child then
starts in about 16 ms instead of 1.5 s (``python benchmarks/bench_processes.py``). The fork
server itself was started by exec, not fork, and has run no torch work, so its children hold
no threads or locks of the parent. Elsewhere (Windows), ``spawn``.

The fork server's children inherit its environment, taken when it started, not the parent's
as it is when the child starts, as with ``spawn``. :func:`pool` and :func:`process` therefore
pass the parent's environment and set it in the child first (the search sets ``JMSNAS_DATA``
for its workers, and tests change ``HOME``). The working directory, ``sys.path`` and the main
module are passed per child by multiprocessing, as with ``spawn``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

__all__ = ["PRELOAD", "context", "pool", "process"]

PRELOAD = ("torch", "numpy", "models.build", "models.split", "models.train")
"""What the fork server imports once, besides the modules its callers name (:func:`context`).
A name that fails to import is skipped by multiprocessing; the child then imports it itself."""

_preload = list(PRELOAD)


def context(preload: tuple[str, ...] = ()) -> BaseContext:
    """The fork server's context, or ``spawn`` where there is none. ``preload``: modules (of
    the caller's package, say) for the fork server to import too, if it has not started yet:
    one server serves every caller in a process. It is started here (:func:`_start_server`)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    _preload.extend(m for m in preload if m not in _preload)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(_preload))
    _start_server()
    return ctx


def _start_server() -> None:
    """Start the fork server (if it is not running) as spawn would start a child: with
    ``sys.path`` from the environment and the safe-path flag, so that a ``torch.py`` or a
    ``models/`` in the current folder cannot shadow what it preloads (Python 3.11's fork server
    puts the folder it was started in first on its path), and with Ctrl-C ignored, so that a
    child ignores it until :func:`_run` or :func:`_start_worker` sets what its parent had."""
    from multiprocessing import forkserver

    changes = {"PYTHONSAFEPATH": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    saved = {k: os.environ.get(k) for k in changes}
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        os.environ.update(changes)
        forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if main:
            signal.signal(signal.SIGINT, previous)


def _interruptible() -> bool:
    """Whether this process takes Ctrl-C (a child started now should too, as with spawn)."""
    return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def pool(workers: int, initializer: Callable[..., None] | None = None,
         initargs: tuple[Any, ...] = (), preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes of :func:`context` (``preload``), in this process's
    environment and Ctrl-C setting, each running ``initializer(*initargs)`` first."""
    return ProcessPoolExecutor(workers, mp_context=context(preload), initializer=_start_worker,
                               initargs=(dict(os.environ), _interruptible(), initializer,
                                         initargs))


def process(target: Callable[..., None], args: tuple[Any, ...], preload: tuple[str, ...] = (),
            **kwargs: Any) -> BaseProcess:
    """An unstarted process of :func:`context` (``preload``) that runs ``target(*args)`` in
    this process's environment and Ctrl-C setting; ``kwargs`` as for
    :class:`multiprocessing.Process` (``name``, ``daemon``)."""
    ctx: Any = context(preload)  # BaseContext's stubs lack Process
    return ctx.Process(target=_run, args=(dict(os.environ), _interruptible(), target, args),
                       **kwargs)


def _setup(env: dict[str, str], interruptible: bool) -> None:
    if os.environ != env:
        os.environ.clear()
        os.environ.update(env)
    if interruptible:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _start_worker(env: dict[str, str], interruptible: bool,
                  initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    _setup(env, interruptible)
    if initializer is not None:
        initializer(*initargs)


def _run(env: dict[str, str], interruptible: bool, target: Callable[..., None],
         args: tuple[Any, ...]) -> None:
    _setup(env, interruptible)
    target(*args)
