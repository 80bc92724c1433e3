"""What a running search reports: one record per generation, as a line, a JSON object or a bar.

:func:`search.nsga.run_search` calls its ``progress`` function with a :class:`SearchProgress`
after every generation is checkpointed (generation 0 is the initial population), and once more
before the front is re-measured; how the record is shown is the caller's choice
(:meth:`SearchProgress.line`, :meth:`SearchProgress.to_dict`, or :func:`progress_bar` on a
terminal).

The fields of :meth:`SearchProgress.to_dict` (``jmsnas search --json`` writes one such object a
line on stderr), NaN written as ``null``:

- ``event``: ``"generation"`` after a generation, ``"front"`` once the last one is done and the
  front's re-measurement starts;
- ``generation``, ``generations``: the generation just done (0: the initial population) and the
  last one;
- ``evaluated``, ``feasible``: designs scored so far (the whole archive), and those feasible;
- ``trained``, ``cached``: proxy trainings this process ran, and accuracies it found in the
  accuracy cache (a resumed run counts from its resumption);
- ``designs_left``: designs the remaining generations will score (``population`` each: offspring
  are fresh); a compressed design may need two trainings (its parent and its fine-tune), a
  cached one none;
- ``best_accuracy``, ``best_latency_s``: the highest proxy accuracy and the lowest latency of any
  feasible design so far (not necessarily one design);
- ``hypervolume``: of every feasible design so far (:func:`search.nsga.front_hypervolume`);
- ``elapsed_s``: seconds since this process started the search;
- ``eta_s``: estimated seconds until the last generation is done: this process's mean time per
  generation times the generations left (our choice; null before the first generation this
  process ran, and in the ``front`` event, whose re-measurement it cannot estimate).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["PROGRESS_FIELDS", "ProgressFn", "SearchProgress", "duration", "progress_bar"]


@dataclass(frozen=True)
class SearchProgress:
    """The state of a search after one generation (see the module docstring for the fields)."""

    event: Literal["generation", "front"]
    generation: int
    generations: int
    evaluated: int
    feasible: int
    trained: int
    cached: int
    designs_left: int
    best_accuracy: float
    best_latency_s: float
    hypervolume: float
    elapsed_s: float
    eta_s: float

    def line(self) -> str:
        """One line for a log: ``generation 2/4: 36 designs evaluated (34 feasible), ...``."""
        acc = "-" if math.isnan(self.best_accuracy) else f"{self.best_accuracy:.3f}"
        lat = "-" if math.isnan(self.best_latency_s) else f"{1e3 * self.best_latency_s:.2f} ms"
        hv = "-" if math.isnan(self.hypervolume) else f"{self.hypervolume:.4f}"
        eta = "" if math.isnan(self.eta_s) else f", about {duration(self.eta_s)} left"
        head = (f"generation {self.generation}/{self.generations}" if self.event == "generation"
                else "search done, re-measuring the front")
        return (f"{head}: {self.evaluated} designs evaluated ({self.feasible} feasible), "
                f"{self.trained} trained + {self.cached} cached, {self.designs_left} to go; "
                f"best accuracy {acc}, lowest latency {lat}, hypervolume {hv}; "
                f"{duration(self.elapsed_s)} elapsed{eta}")

    def to_dict(self) -> dict[str, Any]:
        """The fields, NaN as ``None`` (so that ``json.dumps`` writes standard JSON)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in asdict(self).items()}


PROGRESS_FIELDS = tuple(SearchProgress.__dataclass_fields__)
"""The keys of :meth:`SearchProgress.to_dict`, in order."""

ProgressFn = Callable[[SearchProgress], None]
"""Called with each :class:`SearchProgress` of a run."""


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@contextlib.contextmanager
def progress_bar(generations: int) -> Iterator[ProgressFn]:
    """A tqdm bar over the generations (for a terminal; tqdm shows elapsed and remaining time),
    with the archive, the trainings and the best values as its postfix."""
    from tqdm import tqdm

    bar = tqdm(total=generations + 1, unit="gen", desc="search", leave=False)

    def show(p: SearchProgress) -> None:
        if p.event != "generation":
            bar.set_description("re-measuring the front")
            return
        bar.set_postfix(designs=p.evaluated, trained=p.trained, cached=p.cached,
                        acc=f"{p.best_accuracy:.3f}", lat_ms=f"{1e3 * p.best_latency_s:.1f}",
                        hv=f"{p.hypervolume:.4f}")
        bar.update(p.generation + 1 - bar.n)

    try:
        yield show
    finally:
        bar.close()
