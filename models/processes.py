"""Child processes for torch work: proxy-training workers, deployment nodes, calibrations.

A child started with multiprocessing's ``spawn`` method is a fresh interpreter that imports
torch and the project again: 1.5-2 s of CPU each on two cores, for work that often takes less
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
    one server serves every caller in a process, and it starts on first use."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    _preload.extend(m for m in preload if m not in _preload)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(_preload))
    return ctx


def pool(workers: int, initializer: Callable[..., None] | None = None,
         initargs: tuple[Any, ...] = (), preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes of :func:`context` (``preload``), in this process's
    environment, each running ``initializer(*initargs)`` first."""
    return ProcessPoolExecutor(workers, mp_context=context(preload), initializer=_start_worker,
                               initargs=(dict(os.environ), initializer, initargs))


def process(target: Callable[..., None], args: tuple[Any, ...], preload: tuple[str, ...] = (),
            **kwargs: Any) -> BaseProcess:
    """An unstarted process of :func:`context` (``preload``) that runs ``target(*args)`` in
    this process's environment; ``kwargs`` as for :class:`multiprocessing.Process` (``name``,
    ``daemon``)."""
    ctx: Any = context(preload)  # BaseContext's stubs lack Process
    return ctx.Process(target=_run, args=(dict(os.environ), target, args), **kwargs)


def _environment(env: dict[str, str]) -> None:
    if os.environ != env:
        os.environ.clear()
        os.environ.update(env)


def _start_worker(env: dict[str, str], initializer: Callable[..., None] | None,
                  initargs: tuple[Any, ...]) -> None:
    _environment(env)
    if initializer is not None:
        initializer(*initargs)


def _run(env: dict[str, str], target: Callable[..., None], args: tuple[Any, ...]) -> None:
    _environment(env)
    target(*args)
