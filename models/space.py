"""The architecture search space: genes <-> :class:`ArchSpec`.

A chain-structured macro space in the family of MobileNetV2, MnasNet and ProxylessNAS (our
choice of sizes): a stride-2 3x3 stem, then stages; for each stage three genes choose

- the block type: an inverted residual with expansion 1, 3 or 6 and kernel 3, 5 or 7, or ``skip``
  (the stage is left out; offered only for the later stages, to make shallower networks),
- the depth (blocks in the stage; the first block carries the stage's stride),
- the width (output channels, from the stage's list),

followed by a 1x1 convolution to ``last_channels`` and the classifier head. The genes of a
skipped stage's depth and width have no effect; :meth:`SearchSpace.canonical` sets them to 0 so
that each architecture has one genome.

``mobile`` has about 1.6e12 architectures; ``tiny`` has 320 and can be enumerated completely.
The compression genes of a split point (bottleneck and bit width) belong to the split, not to
the architecture: see :class:`models.build.Cut`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .spec import ArchSpec, Block, Conv, Head, InvertedResidual

__all__ = ["BLOCK_TYPES", "SPACES", "SearchSpace", "StageSpace", "get_space"]

BLOCK_TYPES: tuple[str, ...] = (
    *(f"ir_e{e}_k{k}" for e in (1, 3, 6) for k in (3, 5, 7)),
    "skip",
)
"""Block type names; ``ir_e6_k5`` is an inverted residual with expansion 6 and kernel 5."""

GENES_PER_STAGE = 3


def _parse_type(name: str) -> tuple[int, int]:
    _, e, k = name.split("_")
    return int(e[1:]), int(k[1:])


@dataclass(frozen=True)
class StageSpace:
    """Choices of one stage."""

    types: tuple[str, ...]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stride: int

    def __post_init__(self) -> None:
        for t in self.types:
            if t not in BLOCK_TYPES:
                raise ValueError(f"unknown block type {t!r} (allowed: {', '.join(BLOCK_TYPES)})")
        if not (self.types and self.depths and self.widths):
            raise ValueError("a stage needs at least one type, depth and width")

    @property
    def size(self) -> int:
        """Distinct architectures of this stage (a skipped stage counts once)."""
        blocks = sum(1 for t in self.types if t != "skip")
        return blocks * len(self.depths) * len(self.widths) + ("skip" in self.types)


@dataclass(frozen=True)
class SearchSpace:
    """A named space: a stem, stages and a last convolution (see the module docstring)."""

    name: str
    stem_channels: int
    stages: tuple[StageSpace, ...]
    last_channels: int

    @property
    def n_genes(self) -> int:
        return GENES_PER_STAGE * len(self.stages)

    @property
    def gene_bounds(self) -> tuple[int, ...]:
        """Number of values of each gene (gene g takes values 0 .. bound - 1)."""
        out: list[int] = []
        for st in self.stages:
            out += [len(st.types), len(st.depths), len(st.widths)]
        return tuple(out)

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(st.size for st in self.stages)

    def validate(self, genes: Sequence[int]) -> tuple[int, ...]:
        """The genes as a tuple of ints, or a ValueError naming the first bad gene."""
        g = tuple(genes)
        if len(g) != self.n_genes:
            raise ValueError(f"space {self.name!r}: a genome has {self.n_genes} architecture "
                             f"genes, got {len(g)}")
        names = ("type", "depth", "width")
        for i, (value, bound) in enumerate(zip(g, self.gene_bounds, strict=True)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
                raise ValueError(
                    f"space {self.name!r}: gene {i} (stage {i // 3} {names[i % 3]}) must be an "
                    f"integer in 0..{bound - 1}, got {value!r}"
                )
        return g

    def canonical(self, genes: Sequence[int]) -> tuple[int, ...]:
        """The genome with the ignored genes of skipped stages set to 0."""
        g = list(self.validate(genes))
        for s, st in enumerate(self.stages):
            if st.types[g[3 * s]] == "skip":
                g[3 * s + 1] = g[3 * s + 2] = 0
        return tuple(g)

    def decode(self, genes: Sequence[int]) -> ArchSpec:
        """Genome -> architecture (a pure function of the genes)."""
        g = self.validate(genes)
        blocks: list[Block] = [Conv(self.stem_channels, 3, 2, act="relu6")]
        for s, st in enumerate(self.stages):
            kind = st.types[g[3 * s]]
            if kind == "skip":
                continue
            expansion, kernel = _parse_type(kind)
            depth, width = st.depths[g[3 * s + 1]], st.widths[g[3 * s + 2]]
            blocks += [InvertedResidual(width, expansion, kernel, st.stride if i == 0 else 1)
                       for i in range(depth)]
        blocks += [Conv(self.last_channels, 1, act="relu6"), Head(dropout=0.2)]
        name = f"{self.name}-" + "".join(f"{v:x}" for v in self.canonical(g))
        return ArchSpec(name, tuple(blocks))

    def encode(self, spec: ArchSpec) -> tuple[int, ...]:
        """Architecture -> canonical genome; inverse of :meth:`decode` on this space."""
        prefix = f"{self.name}-"
        if not spec.name.startswith(prefix):
            raise ValueError(f"{spec.name!r} is not an architecture of space {self.name!r}")
        try:
            genes = tuple(int(c, 16) for c in spec.name[len(prefix):])
        except ValueError:
            raise ValueError(f"{spec.name!r} does not name a genome of {self.name!r}") from None
        if self.decode(genes) != spec:
            raise ValueError(f"{spec.name!r}: blocks do not match the genome in its name")
        return genes

    def _stage_options(self) -> list[list[tuple[int, int, int]]]:
        """Each stage's distinct (type, depth, width) genes; a skipped stage has one."""
        per_stage: list[list[tuple[int, int, int]]] = []
        for st in self.stages:
            options = []
            for t, kind in enumerate(st.types):
                if kind == "skip":
                    options.append((t, 0, 0))
                else:
                    options += [(t, d, w) for d in range(len(st.depths))
                                for w in range(len(st.widths))]
            per_stage.append(options)
        return per_stage

    def enumerate(self) -> Iterator[tuple[int, ...]]:
        """Every architecture's canonical genome, once each."""
        for combo in itertools.product(*self._stage_options()):
            yield tuple(v for stage in combo for v in stage)

    def genome(self, index: int) -> tuple[int, ...]:
        """The ``index``-th genome of :meth:`enumerate` (0 <= index < :attr:`size`), without
        enumerating: mixed-radix digits, the last stage varying fastest."""
        if not 0 <= index < self.size:
            raise ValueError(f"space {self.name!r}: index must be in 0..{self.size - 1}, "
                             f"got {index}")
        picks: list[tuple[int, int, int]] = []
        for options in reversed(self._stage_options()):
            index, digit = divmod(index, len(options))
            picks.append(options[digit])
        return tuple(v for stage in reversed(picks) for v in stage)


_IR_TYPES = BLOCK_TYPES[:-1]

SPACES: dict[str, SearchSpace] = {
    "mobile": SearchSpace(
        name="mobile",
        stem_channels=32,
        stages=(
            StageSpace(_IR_TYPES, (1, 2, 3, 4), (16, 24, 32), 2),
            StageSpace(_IR_TYPES, (1, 2, 3, 4), (24, 32, 48), 2),
            StageSpace(_IR_TYPES, (1, 2, 3, 4), (48, 64, 80), 2),
            StageSpace(BLOCK_TYPES, (1, 2, 3, 4), (72, 96, 112), 1),
            StageSpace(BLOCK_TYPES, (1, 2, 3, 4), (120, 160, 192), 2),
            StageSpace(BLOCK_TYPES, (1, 2, 3, 4), (240, 320, 384), 1),
        ),
        last_channels=1280,
    ),
    "tiny": SearchSpace(
        name="tiny",
        stem_channels=16,
        stages=(
            StageSpace(("ir_e3_k3", "ir_e6_k5"), (1, 2), (16, 24), 2),
            StageSpace(("ir_e3_k3", "ir_e6_k5"), (1, 2), (32, 48), 2),
            StageSpace(("ir_e3_k3", "ir_e6_k5", "skip"), (1,), (64, 96), 2),
        ),
        last_channels=128,
    ),
}


def get_space(name: str) -> SearchSpace:
    """A named search space (``mobile`` or ``tiny``)."""
    try:
        return SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r} (allowed: {', '.join(SPACES)})") from None
