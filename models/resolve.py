"""Architectures named on the command line: a reference model, a genome, or a JSON file."""

from __future__ import annotations

from pathlib import Path

from .reference import REFERENCE_MODELS, reference_model
from .space import SPACES, get_space
from .spec import ArchSpec

__all__ = ["resolve_architecture"]

_FORMS = ("a reference model (" + ", ".join(REFERENCE_MODELS) + "), SPACE:G,G,... (genes), "
          "an architecture name such as tiny-010100000, or a JSON file of an architecture")


def resolve_architecture(text: str) -> ArchSpec:
    """``vgg16``; ``tiny:0,1,0,1,0,0,0,0,0``; ``tiny-010100000`` (the name a decoded architecture
    carries); or the path of a JSON file written by ``ArchSpec.to_json``."""
    if text in REFERENCE_MODELS:
        return reference_model(text)
    space, sep, genes = text.partition(":")
    if sep and space in SPACES:
        try:
            values = [int(g) for g in genes.split(",")]
        except ValueError:
            raise ValueError(f"{text!r}: genes must be integers separated by commas") from None
        return get_space(space).decode(values)
    space, sep, hexes = text.partition("-")
    if sep and space in SPACES and hexes and all(c in "0123456789abcdef" for c in hexes):
        return get_space(space).decode([int(c, 16) for c in hexes])
    path = Path(text)
    if path.suffix == ".json" and path.exists():
        return ArchSpec.from_json(path.read_text(encoding="utf-8"))
    raise ValueError(f"{text!r} is not {_FORMS}")
