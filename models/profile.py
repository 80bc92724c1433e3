"""Per-block costs of an architecture at an input shape: FLOPs, parameters, activation sizes.

FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``: convolutions
and matrix products, one multiply-add = 2 FLOPs; batch norm, activations, pooling and additions are
not counted, as in the published multiply-add counts). The model is built on the ``meta`` device
and runs there when it is big (profiling VGG-16 at 224x224 allocates and computes nothing), on
zeroed CPU memory when it is small, which is faster (:data:`_CPU_MAX_BYTES`).

Peak memory of a block is our estimate: float32 parameters plus, over the block's layers, the
largest input + output activation, plus the block's input where a shortcut keeps it alive.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .build import CutCodec, _InvertedResidual, _Residual, build_model, check_cuts
from .spec import ArchSpec, Cut, describe

__all__ = ["BlockProfile", "CodecProfile", "ModelProfile", "profile_model"]

_FLOAT_BYTES = 4


@dataclass(frozen=True)
class BlockProfile:
    index: int
    label: str
    flops: int
    params: int
    out_shape: tuple[int, ...]
    peak_memory_bytes: int

    @property
    def out_elements(self) -> int:
        return math.prod(self.out_shape)


@dataclass(frozen=True)
class CodecProfile:
    """Costs of the compression at a cut: encoder FLOPs on the sender, decoder on the receiver."""

    cut: Cut
    sent_shape: tuple[int, ...]
    encoder_flops: int
    decoder_flops: int
    encoder_params: int
    decoder_params: int

    @property
    def sent_bits(self) -> int:
        return math.prod(self.sent_shape) * self.cut.bits


@dataclass(frozen=True)
class ModelProfile:
    """Costs of every block (per input sample) and of every compressing cut."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    width_scale: float
    blocks: tuple[BlockProfile, ...]
    codecs: tuple[CodecProfile, ...] = ()

    @property
    def total_flops(self) -> int:
        return sum(b.flops for b in self.blocks)

    @property
    def total_params(self) -> int:
        return sum(b.params for b in self.blocks)

    def activation_shape(self, position: int) -> tuple[int, ...]:
        """Shape of what a split at ``position`` sends uncompressed (0: the input)."""
        if not 0 <= position <= len(self.blocks):
            raise ValueError(f"position must be in 0..{len(self.blocks)}, got {position}")
        return self.input_shape if position == 0 else self.blocks[position - 1].out_shape

    def codec(self, position: int) -> CodecProfile | None:
        for c in self.codecs:
            if c.cut.position == position:
                return c
        return None

    def sent_bits(self, position: int, input_bits_per_element: int = 8) -> int:
        """Bits a split at ``position`` sends per sample: the raw input at
        ``input_bits_per_element`` for position 0, else the activation as its cut compresses it
        (32-bit floats without compression)."""
        if position == 0:
            return math.prod(self.input_shape) * input_bits_per_element
        codec = self.codec(position)
        if codec is not None:
            return codec.sent_bits
        return math.prod(self.activation_shape(position)) * 32

    def gradient_bits(self, position: int) -> int:
        """Bits of the gradient that training's backward pass sends back over a split at
        ``position``, per sample: 32-bit floats of the shape sent forward (the bottleneck's,
        for a compressing cut: quantisation's straight-through gradient is not quantised); 0 at
        position 0, where the node before holds no layer to train."""
        if position == 0:
            return 0
        codec = self.codec(position)
        shape = codec.sent_shape if codec is not None else self.activation_shape(position)
        return math.prod(shape) * 32

    def segment_memory_bytes(self, start: int, stop: int) -> int:
        """Memory for running blocks [start, stop) on one node: their parameters plus the
        largest peak activation among them (our estimate)."""
        blocks = self.blocks[start:stop]
        if not blocks:
            return 0
        params = sum(b.params for b in blocks) * _FLOAT_BYTES
        return params + max(b.peak_memory_bytes - b.params * _FLOAT_BYTES for b in blocks)


_CPU_MAX_BYTES = 16 * 2**20
_CPU_MAX_INPUT = 3 * 224 * 224
"""A model whose weights take at most ``_CPU_MAX_BYTES`` and whose input has at most
``_CPU_MAX_INPUT`` values is profiled on zeroed CPU memory, a bigger one on the ``meta``
device. The counts are the same on both (tested); on the meta device torch works out each
operation's output shape in Python, which made a tiny-space architecture at 3x64x64 2.6 times
slower to profile (36 against 15 ms, warm), and the exhaustive baseline profiles every
architecture; on the CPU, VGG-16 at 3x224x224 would allocate 0.55 GB and compute 31 GFLOPs."""


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def profile_model(spec: ArchSpec, input_shape: Sequence[int], num_classes: int = 10, *,
                  width_scale: float = 1.0, cuts: Sequence[Cut] = ()) -> ModelProfile:
    """Profile ``spec`` for one input sample of shape ``input_shape`` (C, H, W).

    Results are memoised (the profile is a pure function of the arguments): asking again for
    the same architecture costs nothing.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {list(shape)}")
    ordered = check_cuts(spec, cuts)
    base = _profile_whole(spec, shape, num_classes, width_scale, ())
    codecs = {c.position: _codec_profile(c, base.blocks[c.position - 1].out_shape)
              for c in ordered if c.compresses}  # one codec per position, as the model has
    return dataclasses.replace(base, codecs=tuple(codecs.values())) if codecs else base


@lru_cache(maxsize=4096)
def _codec_profile(cut: Cut, shape: tuple[int, ...]) -> CodecProfile:
    """The costs of ``cut``'s compression of an activation of ``shape`` (C, H, W). A cut's
    codec sits between two blocks and gives back the shape it was given, so the blocks cost
    the same with or without it: a compressed architecture's profile is its plain profile
    with its codecs' (which the search asks for with many cuts per architecture: a test
    holds this to the whole compressed model's profile)."""
    with torch.device("meta"):  # shapes only: no memory, no draw from torch's generator
        codec = CutCodec(shape[0], cut)
        x = torch.zeros((1, *shape))
    with torch.no_grad():
        with FlopCounterMode(display=False) as encoding:
            y = codec.encoder(x)
        with FlopCounterMode(display=False) as decoding:
            codec.decoder(y)
    return CodecProfile(cut=cut, sent_shape=tuple(y.shape[1:]),
                        encoder_flops=int(encoding.get_total_flops()),
                        decoder_flops=int(decoding.get_total_flops()),
                        encoder_params=_count_params(codec.encoder),
                        decoder_params=_count_params(codec.decoder))


@lru_cache(maxsize=2048)
def _profile_whole(spec: ArchSpec, shape: tuple[int, ...], num_classes: int, width_scale: float,
                   cuts: tuple[Cut, ...]) -> ModelProfile:
    """The profile of the whole model, its codecs included, from one counted forward pass
    (:func:`profile_model` asks it for plain models only)."""
    with torch.device("meta"):  # no memory, no initialisation
        model = build_model(spec, shape[0], num_classes, width_scale=width_scale, cuts=cuts)
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    small = (sum(t.numel() * t.element_size() for t in tensors) <= _CPU_MAX_BYTES
             and math.prod(shape) <= _CPU_MAX_INPUT)
    if small:  # see _CPU_MAX_BYTES
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                tensor.zero_()
    x = torch.zeros((1, *shape), device="cpu" if small else "meta")
    model.eval()
    out_shapes: dict[int, tuple[int, ...]] = {}
    peaks: dict[int, int] = {}
    sent: dict[str, tuple[int, ...]] = {}
    hooks = []

    def leaf_hook(index: int):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            size = out.numel()
            if not getattr(mod, "inplace", False):  # an in-place op writes over its input
                size += sum(t.numel() for t in inp if isinstance(t, torch.Tensor))
            peaks[index] = max(peaks.get(index, 0), size)
        return hook

    def block_hook(index: int):  # type: ignore[no-untyped-def]
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            out_shapes[index] = tuple(out.shape[1:])
            if isinstance(mod, _Residual | _InvertedResidual):
                peaks[index] = peaks.get(index, 0) + inp[0].numel()
        return hook

    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(block_hook(i)))
        for sub in block.modules():
            if not list(sub.children()):
                hooks.append(sub.register_forward_hook(leaf_hook(i)))
    codec_modules = {key: cast(CutCodec, c) for key, c in model.codecs.items()}
    for key, codec in codec_modules.items():
        hooks.append(codec.encoder.register_forward_hook(
            lambda m, i, o, key=key: sent.__setitem__(key, tuple(o.shape[1:]))))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(x)
    except RuntimeError as exc:
        raise ValueError(f"{spec.name} cannot run on input {list(shape)}: "
                         f"{str(exc).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()

    def flops_of(fqn: str) -> int:
        return int(sum(counts.get(f"ChainModel.{fqn}", {}).values()))

    blocks = []
    for i, (b, module) in enumerate(zip(spec.blocks, model.blocks, strict=True)):
        params = _count_params(module)
        blocks.append(BlockProfile(
            index=i, label=describe(b), flops=flops_of(f"blocks.{i}"), params=params,
            out_shape=out_shapes[i],
            peak_memory_bytes=params * _FLOAT_BYTES + peaks.get(i, 0) * _FLOAT_BYTES,
        ))
    codecs = []
    for key, codec in codec_modules.items():
        codecs.append(CodecProfile(
            cut=codec.cut,
            sent_shape=sent[key],
            encoder_flops=flops_of(f"codecs.{key}.encoder"),
            decoder_flops=flops_of(f"codecs.{key}.decoder"),
            encoder_params=_count_params(codec.encoder),
            decoder_params=_count_params(codec.decoder),
        ))
    return ModelProfile(spec.name, shape, num_classes, width_scale, tuple(blocks), tuple(codecs))
