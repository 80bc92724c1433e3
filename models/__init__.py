"""Architectures, their costs and their accuracy; knows nothing about networks.

- :mod:`models.spec`: an architecture as data (:class:`ArchSpec`, a chain of blocks).
- :mod:`models.space`: the search space, genes <-> ArchSpec (``mobile`` and ``tiny``).
- :mod:`models.reference`: AlexNet, VGG-16, ResNet-18/50, MobileNetV2 as ArchSpecs.
- :mod:`models.build`: torch modules, with split-point compression (:class:`Cut`).
- :mod:`models.profile`: per-block FLOPs, parameters, activation sizes, memory.
- :mod:`models.split`: per-node segments that compose to the whole model; save and load.
- :mod:`models.data`, :mod:`models.train`, :mod:`models.cache`: data sets, proxy training,
  the SQLite accuracy cache.
"""

from .build import build_model
from .cache import AccuracyCache
from .data import DATASETS, Dataset, load_dataset
from .profile import ModelProfile, profile_model
from .reference import REFERENCE_MODELS, reference_model
from .space import SPACES, SearchSpace, get_space
from .spec import ArchSpec, Cut
from .split import load_segment, run_segments, save_segments, split_model
from .train import ProxyBudget, TrainResult, proxy_accuracy

__all__ = [
    "DATASETS",
    "REFERENCE_MODELS",
    "SPACES",
    "AccuracyCache",
    "ArchSpec",
    "Cut",
    "Dataset",
    "ModelProfile",
    "ProxyBudget",
    "SearchSpace",
    "TrainResult",
    "build_model",
    "get_space",
    "load_dataset",
    "load_segment",
    "profile_model",
    "proxy_accuracy",
    "reference_model",
    "run_segments",
    "save_segments",
    "split_model",
]
