"""PyTorch modules from an :class:`~models.spec.ArchSpec`: one builder for every block type.

``build_model(spec, in_channels, num_classes, width_scale, cuts)`` gives a :class:`ChainModel`
whose ``blocks`` run in order. At each :class:`Cut` the activation is compressed as it would be on
the link: an optional 1x1 bottleneck to a fraction of the channels (a 1x1 decoder restores them on
the receiving side) and an optional 8-bit quantisation. In training the quantiser passes gradients
straight through (Bengio et al. 2013); :mod:`models.split` quantises for real.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from .spec import (
    BIT_WIDTHS,
    BOTTLENECKS,
    ArchSpec,
    BasicBlock,
    Block,
    Bottleneck,
    Conv,
    Cut,
    Head,
    InvertedResidual,
    Pool,
)

__all__ = [  # BIT_WIDTHS, BOTTLENECKS and Cut live in models.spec (plain values, no torch)
    "BIT_WIDTHS",
    "BOTTLENECKS",
    "ChainModel",
    "Cut",
    "CutCodec",
    "block_out_channels",
    "build_model",
    "channels_before",
    "dequantize",
    "quantize",
    "scale_width",
]

def scale_width(channels: int, width_scale: float, multiple: int = 1) -> int:
    """``channels`` x ``width_scale``, rounded to a multiple of ``multiple``, at least one."""
    return max(multiple, round(channels * width_scale / multiple) * multiple)


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True),
            "none": nn.Identity()}[kind]


def _conv_bn_act(cin: int, cout: int, kernel: int, stride: int, act: str = "relu",
                 bn: bool = True, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                         bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_act(act))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, b: InvertedResidual, cout: int) -> None:
        super().__init__()
        hidden = cin * b.expansion
        layers: list[nn.Module] = []
        if b.expansion != 1:
            layers.append(_conv_bn_act(cin, hidden, 1, 1, "relu6"))
        layers.append(_conv_bn_act(hidden, hidden, b.kernel, b.stride, "relu6", groups=hidden))
        layers.append(_conv_bn_act(hidden, cout, 1, 1, "none"))
        self.body = nn.Sequential(*layers)
        self.residual = b.stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class _Residual(nn.Module):
    """Body plus shortcut, then ReLU (ResNet basic and bottleneck blocks)."""

    def __init__(self, body: nn.Module, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = _conv_bn_act(cin, cout, 1, stride, "none")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class _Head(nn.Module):
    def __init__(self, cin: int, b: Head, num_classes: int, width_scale: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(b.pool), nn.Flatten()]
        width = cin * b.pool * b.pool
        # Dropout before every linear layer but a first hidden one: VGG's classifier with hidden
        # layers, MobileNetV2's without.
        for i, h in enumerate((*(scale_width(h, width_scale) for h in b.hidden), num_classes)):
            if b.dropout > 0 and (i > 0 or not b.hidden):
                layers.append(nn.Dropout(b.dropout))
            layers.append(nn.Linear(width, h))
            if i < len(b.hidden):
                layers.append(nn.ReLU(inplace=True))
            width = h
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def block_out_channels(block: Block, cin: int, width_scale: float = 1.0) -> int:
    """Output channels of ``block`` given its input channels (a Head's: its input's)."""
    if isinstance(block, Pool | Head):
        return cin
    if isinstance(block, Conv) and block.depthwise:
        return cin
    if isinstance(block, Bottleneck):
        return scale_width(block.out, width_scale, 4)
    return scale_width(block.out, width_scale)


def channels_before(spec: ArchSpec, in_channels: int, width_scale: float = 1.0) -> list[int]:
    """Channels entering each block, plus (last entry) the channels the Head receives."""
    out = [in_channels]
    for block in spec.blocks[:-1]:
        out.append(block_out_channels(block, out[-1], width_scale))
    return out


def _make_block(block: Block, cin: int, num_classes: int, width_scale: float) -> nn.Module:
    cout = block_out_channels(block, cin, width_scale)
    if isinstance(block, Conv):
        return _conv_bn_act(cin, cout, block.kernel, block.stride, block.act, block.bn,
                            groups=cin if block.depthwise else 1)
    if isinstance(block, Pool):
        if block.mode == "max":
            return nn.MaxPool2d(block.kernel, block.stride, block.padding)
        return nn.AvgPool2d(block.kernel, block.stride, block.padding)
    if isinstance(block, InvertedResidual):
        return _InvertedResidual(cin, block, cout)
    if isinstance(block, BasicBlock):
        body = nn.Sequential(_conv_bn_act(cin, cout, 3, block.stride),
                             _conv_bn_act(cout, cout, 3, 1, "none"))
        return _Residual(body, cin, cout, block.stride)
    if isinstance(block, Bottleneck):
        mid = cout // 4
        body = nn.Sequential(_conv_bn_act(cin, mid, 1, 1), _conv_bn_act(mid, mid, 3, block.stride),
                             _conv_bn_act(mid, cout, 1, 1, "none"))
        return _Residual(body, cin, cout, block.stride)
    if isinstance(block, Head):
        return _Head(cin, block, num_classes, width_scale)
    raise TypeError(f"unknown block {block!r}")  # pragma: no cover


def quantize(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample asymmetric min-max quantisation to unsigned ``bits``-bit integers.

    Each sample (index 0 of ``x``) gets its own range, so a sample quantises the same whether it
    is sent alone or in a batch. Returns (q as uint8, scale, minimum), the last two of shape
    (N, 1, ..., 1); x is approximated by q * scale + minimum, with an error of at most scale / 2
    per element.
    """
    levels = 2**bits - 1
    flat = x.reshape(x.shape[0], -1)
    keep = (x.shape[0],) + (1,) * (x.dim() - 1)
    lo, hi = flat.min(dim=1).values.reshape(keep), flat.max(dim=1).values.reshape(keep)
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round((x - lo) / scale), 0, levels).to(torch.uint8)
    return q, scale, lo


def dequantize(q: Tensor, scale: Tensor, lo: Tensor) -> Tensor:
    """Inverse of :func:`quantize` (up to its rounding)."""
    return q.to(scale.dtype) * scale + lo


class CutCodec(nn.Module):
    """What happens to the activation at a cut: encode (sender side), then decode (receiver side).

    ``encode`` returns the transmitted payload: a float tensor at 32 bits, else (q, scale, min).
    ``forward`` (used when the model runs whole, e.g. in training) does both, with the
    quantisation's gradient passed straight through.
    """

    def __init__(self, channels: int, cut: Cut) -> None:
        super().__init__()
        self.cut = cut
        self.channels = channels
        self.sent_channels = channels
        if cut.bottleneck < 1:
            self.sent_channels = scale_width(channels, cut.bottleneck)
        self.encoder: nn.Module = nn.Identity()
        self.decoder: nn.Module = nn.Identity()
        if cut.bottleneck < 1.0:
            # Linear both ways: the activation at a cut may be negative (an inverted residual's
            # output has no activation function), so a ReLU after the decoder would lose half
            # of it. A Sequential keeps the weights' names ("decoder.0.weight").
            self.encoder = nn.Conv2d(channels, self.sent_channels, 1)
            self.decoder = nn.Sequential(nn.Conv2d(self.sent_channels, channels, 1))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Start the bottleneck as the principal components of activations ``x`` (N, C, H, W):
        each pixel's channel vector is projected on the top ``sent_channels`` eigenvectors of
        their covariance and mapped back, the best linear rank-k reconstruction (Pearson 1901;
        our use as an initialisation). Does nothing without a bottleneck."""
        if self.cut.bottleneck >= 1.0:
            return
        flat = x.permute(0, 2, 3, 1).reshape(-1, self.channels).double()
        if not bool(torch.isfinite(flat).all()):
            return  # a diverged parent: keep the default start, training will report it
        mean = flat.mean(dim=0)
        centred = flat - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred / max(1, flat.shape[0] - 1))
        w = vectors[:, -self.sent_channels:].T  # (k, C), largest eigenvalues last in eigh
        enc = cast(nn.Conv2d, self.encoder)
        dec = cast(nn.Conv2d, cast(nn.Sequential, self.decoder)[0])
        assert enc.bias is not None and dec.bias is not None  # both convolutions have biases
        enc.weight.copy_(w[:, :, None, None].to(enc.weight.dtype))
        enc.bias.copy_((-w @ mean).to(enc.bias.dtype))
        dec.weight.copy_(w.T[:, :, None, None].to(dec.weight.dtype))
        dec.bias.copy_(mean.to(dec.bias.dtype))

    def encode(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        y = self.encoder(x)
        return quantize(y, self.cut.bits) if self.cut.bits < 32 else y

    def decode(self, payload: Tensor | tuple[Tensor, Tensor, Tensor]) -> Tensor:
        y = dequantize(*payload) if isinstance(payload, tuple) else payload
        return self.decoder(y)

    def forward(self, x: Tensor) -> Tensor:
        y = self.encoder(x)
        if self.cut.bits < 32:
            y_hat = dequantize(*quantize(y, self.cut.bits))
            if torch.is_grad_enabled() and y.requires_grad:
                y = y + (y_hat - y).detach()  # straight-through estimator
            else:
                y = y_hat  # bit for bit what the split segments compute
        return self.decoder(y)


def check_cuts(spec: ArchSpec, cuts: Sequence[Cut]) -> tuple[Cut, ...]:
    """``cuts`` in position order; raises ``ValueError`` for a position outside 0..n_blocks,
    two different cuts at one position, or compression at either end of the network."""
    ordered = tuple(sorted(cuts, key=lambda c: c.position))
    for a, b in itertools.pairwise(ordered):
        if a.position == b.position and a != b:
            raise ValueError(f"two cuts at position {a.position} with different compression")
    for cut in ordered:
        if not 0 <= cut.position <= spec.n_blocks:
            raise ValueError(f"Cut.position must be in 0..{spec.n_blocks}, got {cut.position}")
        if cut.compresses and not 0 < cut.position < spec.n_blocks:
            raise ValueError(
                f"a cut at position {cut.position} cannot compress: bottlenecks and "
                f"quantisation apply between blocks 1..{spec.n_blocks - 1}"
            )
    return ordered


class ChainModel(nn.Module):
    """The whole network: ``blocks`` in order, with a :class:`CutCodec` before block p for every
    compressing cut at position p."""

    def __init__(self, spec: ArchSpec, in_channels: int, num_classes: int,
                 width_scale: float = 1.0, cuts: Sequence[Cut] = ()) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width_scale = width_scale
        self.cuts = check_cuts(spec, cuts)
        chans = channels_before(spec, in_channels, width_scale)
        self.blocks = nn.ModuleList(
            _make_block(b, chans[i], num_classes, width_scale) for i, b in enumerate(spec.blocks)
        )
        self.codecs = nn.ModuleDict()
        for cut in self.cuts:
            if cut.compresses:
                self.codecs[str(cut.position)] = CutCodec(chans[cut.position], cut)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            key = str(i)
            if key in self.codecs:
                x = self.codecs[key](x)
            x = block(x)
        return x

    @torch.no_grad()
    def fit_codecs(self, x: Tensor) -> None:
        """Fit every bottleneck (:meth:`CutCodec.fit`) to the activations that inputs ``x``
        produce at its cut, in order, each seeing the earlier codecs' reconstructions; batch
        norm uses its running statistics."""
        was_training = self.training
        self.eval()
        for i, block in enumerate(self.blocks):
            key = str(i)
            if key in self.codecs:
                codec = cast(CutCodec, self.codecs[key])
                codec.fit(x)
                x = codec(x)
            x = block(x)
        self.train(was_training)


def build_model(spec: ArchSpec, in_channels: int, num_classes: int, *, width_scale: float = 1.0,
                cuts: Sequence[Cut] = ()) -> ChainModel:
    """Build ``spec`` for inputs of ``in_channels`` channels and ``num_classes`` classes.

    ``width_scale`` multiplies every layer's width (proxy training trains narrower copies);
    ``cuts`` with compression insert their bottleneck and quantiser.
    """
    if not 0 < width_scale <= 4:
        raise ValueError(f"width_scale must be in (0, 4], got {width_scale}")
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, "
                         f"{num_classes}")
    return ChainModel(spec, in_channels, num_classes, width_scale, cuts)
