"""Architectures as data: a chain of block descriptions, frozen and serialisable to JSON.

An :class:`ArchSpec` is a chain of blocks ending in a classifier :class:`Head`. It says nothing
about the input's channels or the number of classes: those come from where it is used (the
deployment input shape of a scenario, or the proxy data set), so one architecture can be profiled
at 3x224x224 and trained on 1x28x28. Split points lie between blocks: a split at position p sends
the output of the first p blocks (p = 0 sends the raw input).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = [
    "BIT_WIDTHS",
    "BOTTLENECKS",
    "ArchSpec",
    "BasicBlock",
    "Block",
    "Bottleneck",
    "Conv",
    "Cut",
    "Head",
    "InvertedResidual",
    "Pool",
    "describe",
]


BOTTLENECKS: tuple[float, ...] = (1.0, 0.5, 0.25)
"""Fractions of the channels a split point may keep (1: no bottleneck)."""
BIT_WIDTHS: tuple[int, ...] = (32, 8)
"""Bits per transmitted activation element."""


@dataclass(frozen=True)
class Cut:
    """A split point after ``position`` blocks, with its compression (what crosses the link:
    a fraction ``bottleneck`` of the channels at ``bits`` per element)."""

    position: int
    bottleneck: float = 1.0
    bits: int = 32

    def __post_init__(self) -> None:
        if self.bottleneck not in BOTTLENECKS:
            raise ValueError(f"Cut.bottleneck must be one of {BOTTLENECKS}, got {self.bottleneck}")
        if self.bits not in BIT_WIDTHS:
            raise ValueError(f"Cut.bits must be one of {BIT_WIDTHS}, got {self.bits}")
        if self.position < 0:
            raise ValueError(f"Cut.position must be >= 0, got {self.position}")

    @property
    def compresses(self) -> bool:
        return self.bottleneck != 1.0 or self.bits != 32


def _check(cond: bool, block: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{block}: {message}")


@dataclass(frozen=True)
class Conv:
    """Convolution, batch normalisation, activation. ``depthwise``: one filter per channel."""

    out: int
    kernel: int = 3
    stride: int = 1
    act: Literal["relu", "relu6", "none"] = "relu"
    bn: bool = True
    depthwise: bool = False

    def __post_init__(self) -> None:
        _check(self.out >= 1, "Conv", f"out must be >= 1, got {self.out}")
        _check(self.kernel >= 1 and self.kernel % 2 == 1, "Conv",
               f"kernel must be odd and >= 1, got {self.kernel}")
        _check(self.stride in (1, 2, 4), "Conv", f"stride must be 1, 2 or 4, got {self.stride}")
        _check(self.act in ("relu", "relu6", "none"), "Conv",
               f"act must be relu, relu6 or none, got {self.act!r}")


@dataclass(frozen=True)
class Pool:
    """Max or average pooling."""

    mode: Literal["max", "avg"] = "max"
    kernel: int = 2
    stride: int = 2
    padding: int = 0

    def __post_init__(self) -> None:
        _check(self.mode in ("max", "avg"), "Pool", f"mode must be max or avg, got {self.mode!r}")
        _check(self.kernel >= 1 and self.stride >= 1, "Pool", "kernel and stride must be >= 1")
        _check(0 <= self.padding <= self.kernel // 2, "Pool",
               f"padding must be in 0..kernel/2, got {self.padding}")


@dataclass(frozen=True)
class InvertedResidual:
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expand (skipped at expansion 1), kxk
    depthwise, 1x1 linear projection; identity shortcut when stride is 1 and channels match."""

    out: int
    expansion: int = 6
    kernel: int = 3
    stride: int = 1

    def __post_init__(self) -> None:
        _check(self.out >= 1, "InvertedResidual", f"out must be >= 1, got {self.out}")
        _check(self.expansion >= 1, "InvertedResidual",
               f"expansion must be >= 1, got {self.expansion}")
        _check(self.kernel >= 1 and self.kernel % 2 == 1, "InvertedResidual",
               f"kernel must be odd, got {self.kernel}")
        _check(self.stride in (1, 2), "InvertedResidual",
               f"stride must be 1 or 2, got {self.stride}")


@dataclass(frozen=True)
class BasicBlock:
    """ResNet-18/34 block (He et al. 2016): two 3x3 convolutions and a shortcut (1x1 projection
    when the stride or the channels change)."""

    out: int
    stride: int = 1

    def __post_init__(self) -> None:
        _check(self.out >= 1, "BasicBlock", f"out must be >= 1, got {self.out}")
        _check(self.stride in (1, 2), "BasicBlock", f"stride must be 1 or 2, got {self.stride}")


@dataclass(frozen=True)
class Bottleneck:
    """ResNet-50 block: 1x1 reduce to out/4, 3x3 (with the stride, as torchvision's "v1.5"),
    1x1 expand to ``out``, and a shortcut."""

    out: int
    stride: int = 1

    def __post_init__(self) -> None:
        _check(self.out >= 4 and self.out % 4 == 0, "Bottleneck",
               f"out must be a multiple of 4, got {self.out}")
        _check(self.stride in (1, 2), "Bottleneck", f"stride must be 1 or 2, got {self.stride}")


@dataclass(frozen=True)
class Head:
    """Classifier: adaptive average pooling to ``pool`` x ``pool``, flatten, the ``hidden``
    fully connected layers (ReLU, dropout), then a linear layer to the classes."""

    pool: int = 1
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(self.pool >= 1, "Head", f"pool must be >= 1, got {self.pool}")
        _check(all(h >= 1 for h in self.hidden), "Head", "hidden sizes must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "Head", f"dropout must be in [0, 1), got {self.dropout}")


Block = Conv | Pool | InvertedResidual | BasicBlock | Bottleneck | Head
_BLOCK_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Conv, Pool, InvertedResidual, BasicBlock, Bottleneck, Head)
}


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "out": int, "kernel": int, "stride": int, "padding": int, "pool": int, "expansion": int,
    "act": str, "mode": str, "bn": bool, "depthwise": bool, "dropout": (int, float),
}


def _typed_block(block_cls: type[Any], raw: dict[str, Any], i: int) -> Block:
    """Build a block from JSON values, refusing values of the wrong type by field name."""
    for key, value in raw.items():
        if key == "hidden":
            if not isinstance(value, list | tuple) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in value
            ):
                raise ValueError(f"blocks[{i}].hidden must be a list of integers, got {value!r}")
            raw[key] = tuple(value)
            continue
        expected = _FIELD_TYPES.get(key)
        wrong_bool = isinstance(value, bool) and expected is not bool
        if expected is not None and (wrong_bool or not isinstance(value, expected)):
            raise ValueError(f"blocks[{i}].{key} has the wrong type: {value!r}")
    try:
        block: Block = block_cls(**raw)
        return block
    except ValueError as exc:
        raise ValueError(f"blocks[{i}]: {exc}") from None


@dataclass(frozen=True)
class ArchSpec:
    """A network: ``blocks`` run in order; the last one is the classifier :class:`Head`."""

    name: str
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks or not isinstance(self.blocks[-1], Head):
            raise ValueError(f"ArchSpec {self.name!r}: the last block must be a Head")
        for i, b in enumerate(self.blocks[:-1]):
            if isinstance(b, Head):
                raise ValueError(f"ArchSpec {self.name!r}: blocks[{i}] is a Head before the end")

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "blocks": [{"type": type(b).__name__, **asdict(b)} for b in self.blocks],
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        try:
            blocks = []
            if not isinstance(data["blocks"], list):
                raise ValueError("architecture: blocks must be a list of blocks")
            for i, raw in enumerate(data["blocks"]):
                if not isinstance(raw, dict):
                    raise ValueError(f"blocks[{i}] must be a mapping with a 'type' key")
                raw = dict(raw)
                kind = raw.pop("type")
                if kind not in _BLOCK_TYPES:
                    raise ValueError(f"blocks[{i}].type: unknown block {kind!r} "
                                     f"(allowed: {', '.join(_BLOCK_TYPES)})")
                block_cls = _BLOCK_TYPES[kind]
                allowed = {f.name for f in fields(block_cls)}
                unknown = set(raw) - allowed
                if unknown:
                    raise ValueError(f"blocks[{i}]: unknown key {sorted(unknown)[0]!r} for {kind}")
                blocks.append(_typed_block(block_cls, raw, i))
            return cls(name=str(data["name"]), blocks=tuple(blocks))
        except KeyError as exc:
            raise ValueError(f"architecture: missing key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"architecture: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(json.loads(text))


def describe(block: Block) -> str:
    """A short human-readable label for a block (for tables)."""
    if isinstance(block, Conv):
        kind = "DWConv" if block.depthwise else "Conv"
        return f"{kind} {block.kernel}x{block.kernel}/{block.stride} -> {block.out}"
    if isinstance(block, Pool):
        return f"{block.mode.capitalize()}Pool {block.kernel}/{block.stride}"
    if isinstance(block, InvertedResidual):
        return f"IR e{block.expansion} {block.kernel}x{block.kernel}/{block.stride} -> {block.out}"
    if isinstance(block, BasicBlock):
        return f"Basic /{block.stride} -> {block.out}"
    if isinstance(block, Bottleneck):
        return f"Bottleneck /{block.stride} -> {block.out}"
    hidden = "-".join(str(h) for h in block.hidden)
    return f"Head pool{block.pool}" + (f" fc {hidden}" if hidden else "")
