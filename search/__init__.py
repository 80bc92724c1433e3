"""The joint search of an architecture and its split points over a scenario's network.

- :mod:`search.design`: genomes <-> designs (architecture, route, cuts).
- :mod:`search.pipeline`: a design's compute and transfer stages for the simulator.
- :mod:`search.dp`: the exact optimal split of a fixed architecture (dynamic programming).
- :mod:`search.evaluate`: accuracy (cached proxy training) and simulated latency of designs.
- :mod:`search.nsga`: NSGA-II with checkpoints and resume (:func:`run_search`).
- :mod:`search.progress`: what a running search reports, once a generation.
- :mod:`search.runs`: run folders: default names, what a rerun does, the saved configuration.
- :mod:`search.baselines`: random and exhaustive search, fixed placements, Neurosurgeon-style
  fixed models and the two-stage search-then-split, through the same evaluation.
- :mod:`search.optuna_search`: Optuna's TPE and NSGA-II samplers, through the same evaluation
  (the ``compare`` extra).
- :mod:`search.sweep`: the scalarised objective swept over lambda (trade-off curves).
- :mod:`search.indicators`, :mod:`search.outputs`: hypervolume and IGD; the run folder.
"""

from .config import SearchConfig, load_search_config
from .nsga import SearchResult, run_search

__all__ = ["SearchConfig", "SearchResult", "load_search_config", "run_search"]
