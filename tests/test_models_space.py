"""Architectures as data: JSON round trips, genome <-> spec, the named spaces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.build import build_model
from models.reference import REFERENCE_MODELS, reference_model
from models.space import SPACES, get_space
from models.spec import ArchSpec, Conv, Head, InvertedResidual


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_reference_specs_round_trip_through_json(name: str) -> None:
    spec = reference_model(name)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()


def test_space_sizes() -> None:
    assert SPACES["mobile"].size >= 10**6
    tiny = SPACES["tiny"]
    genomes = list(tiny.enumerate())
    assert len(genomes) == tiny.size <= 1000
    specs = {tiny.decode(g).to_json() for g in genomes}
    assert len(specs) == len(genomes)  # every genome a different architecture


@pytest.mark.parametrize("space", list(SPACES))
def test_genome_round_trip(space: str) -> None:
    sp = get_space(space)
    rng = np.random.default_rng(0)
    for _ in range(200):
        genes = [int(rng.integers(b)) for b in sp.gene_bounds]
        spec = sp.decode(genes)
        assert sp.encode(spec) == sp.canonical(genes)
        assert sp.decode(sp.encode(spec)) == spec
        assert ArchSpec.from_json(spec.to_json()) == spec


def test_decode_is_pure_and_skips_stages() -> None:
    sp = get_space("tiny")
    skip = sp.stages[2].types.index("skip")
    a = sp.decode([0, 0, 0, 0, 0, 0, skip, 0, 1])
    b = sp.decode([0, 0, 0, 0, 0, 0, skip, 0, 0])
    assert a == b  # depth and width genes of a skipped stage have no effect
    assert sum(isinstance(x, InvertedResidual) for x in a.blocks) == 2
    full = sp.decode([1, 1, 1, 1, 1, 1, 1, 0, 1])
    assert [x.out for x in full.blocks if isinstance(x, InvertedResidual)] == [24, 24, 48, 48, 96]
    assert full.blocks[1] == InvertedResidual(24, 6, 5, 2)


@pytest.mark.parametrize(("genes", "message"), [
    ([0] * 8, "has 9 architecture genes, got 8"),
    ([0, 0, 0, 0, 0, 0, 3, 0, 0], r"gene 6 \(stage 2 type\) must be an integer in 0..2, got 3"),
    ([0, 2, 0, 0, 0, 0, 0, 0, 0], r"gene 1 \(stage 0 depth\) must be an integer in 0..1"),
    ([0, 0, -1, 0, 0, 0, 0, 0, 0], r"gene 2 \(stage 0 width\)"),
    ([0, 0, 0.5, 0, 0, 0, 0, 0, 0], r"gene 2 \(stage 0 width\) .* got 0.5"),
])
def test_invalid_genomes_are_refused(genes: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_space("tiny").decode(genes)  # type: ignore[arg-type]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="last block must be a Head"):
        ArchSpec("x", (Conv(8),))
    with pytest.raises(ValueError, match="kernel must be odd"):
        Conv(8, kernel=4)
    bad = json.loads(ArchSpec("x", (Conv(8), Head())).to_json())
    bad["blocks"][0]["type"] = "Transformer"
    with pytest.raises(ValueError, match=r"blocks\[0\].type: unknown block 'Transformer'"):
        ArchSpec.from_dict(bad)
    with pytest.raises(ValueError, match="unknown search space 'huge'"):
        get_space("huge")
    with pytest.raises(ValueError, match="unknown reference model"):
        reference_model("vgg19")


def test_encode_refuses_foreign_specs() -> None:
    with pytest.raises(ValueError, match="not an architecture of space 'tiny'"):
        get_space("tiny").encode(reference_model("resnet18"))


@pytest.mark.parametrize("space", list(SPACES))
def test_decoded_models_build_and_run(space: str) -> None:
    import torch

    sp = get_space(space)
    rng = np.random.default_rng(1)
    for _ in range(3):
        spec = sp.decode([int(rng.integers(b)) for b in sp.gene_bounds])
        model = build_model(spec, 1, 10, width_scale=0.25).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(("blocks", "message"), [
    ([{"type": "Conv", "out": "16"}, {"type": "Head"}], r"blocks\[0\].out has the wrong type"),
    ([{"type": "Head", "hidden": 5}], r"blocks\[0\].hidden must be a list of integers"),
    ("Conv", "blocks must be a list"),
    (["Conv"], r"blocks\[0\] must be a mapping"),
    ([{"type": "Conv", "out": 16, "kernel": 4}, {"type": "Head"}], r"blocks\[0\]: Conv: kernel"),
    ([{"type": "Conv", "out": 16, "bn": 1}, {"type": "Head"}], r"blocks\[0\].bn has the wrong"),
])
def test_badly_typed_json_is_refused_by_field(blocks: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArchSpec.from_dict({"name": "x", "blocks": blocks})


@pytest.mark.parametrize("name", ["tiny", "mobile"])
def test_genome_by_index_is_the_enumeration_order(name: str) -> None:
    """Catches an index decoder whose digits run the other way or skip options (it would
    sample a different, non-uniform set): it equals enumerate() over its first 400 genomes and
    every genome it gives is canonical and distinct."""
    import itertools

    space = get_space(name)
    k = min(400, space.size)
    assert [space.genome(i) for i in range(k)] == list(itertools.islice(space.enumerate(), k))
    last = space.genome(space.size - 1)
    assert space.canonical(last) == last
    with pytest.raises(ValueError, match="index must be in"):
        space.genome(space.size)
