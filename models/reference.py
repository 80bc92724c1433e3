"""Fixed reference architectures for the baselines, written as :class:`ArchSpec` chains.

Layer for layer as in the papers (and in torchvision's versions of them), so that their
multiply-add counts match the published ones: AlexNet (Krizhevsky et al. 2012; the single-tower
variant), VGG-16 (Simonyan and Zisserman 2015, configuration D), ResNet-18 and ResNet-50 (He et al.
2016; the stride in the 3x3 convolution of the bottleneck, as torchvision), MobileNetV2 (Sandler et
al. 2018, width 1.0). Each block is a split point candidate, as in Neurosurgeon.
"""

from __future__ import annotations

from collections.abc import Callable

from .spec import ArchSpec, BasicBlock, Block, Bottleneck, Conv, Head, InvertedResidual, Pool

__all__ = ["REFERENCE_MODELS", "reference_model"]


def alexnet() -> ArchSpec:
    blocks: list[Block] = [
        Conv(64, 11, 4, bn=False), Pool("max", 3, 2),
        Conv(192, 5, bn=False), Pool("max", 3, 2),
        Conv(384, bn=False), Conv(256, bn=False), Conv(256, bn=False), Pool("max", 3, 2),
        Head(pool=6, hidden=(4096, 4096), dropout=0.5),
    ]
    return ArchSpec("alexnet", tuple(blocks))


def vgg16() -> ArchSpec:
    blocks: list[Block] = []
    for width, repeat in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        blocks += [Conv(width, bn=False) for _ in range(repeat)]
        blocks.append(Pool("max", 2, 2))
    blocks.append(Head(pool=7, hidden=(4096, 4096), dropout=0.5))
    return ArchSpec("vgg16", tuple(blocks))


def _resnet(name: str, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...],
            expansion: int) -> ArchSpec:
    blocks: list[Block] = [Conv(64, 7, 2), Pool("max", 3, 2, padding=1)]
    for stage, depth in enumerate(depths):
        width = 64 * 2**stage * expansion
        for i in range(depth):
            blocks.append(block(width, stride=2 if stage > 0 and i == 0 else 1))
    blocks.append(Head())
    return ArchSpec(name, tuple(blocks))


def resnet18() -> ArchSpec:
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), 1)


def resnet50() -> ArchSpec:
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), 4)


def mobilenet_v2() -> ArchSpec:
    blocks: list[Block] = [Conv(32, 3, 2, act="relu6")]
    # (expansion, channels, repeats, first stride), Table 2 of the paper.
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        blocks += [InvertedResidual(c, t, 3, s if i == 0 else 1) for i in range(n)]
    blocks += [Conv(1280, 1, act="relu6"), Head(dropout=0.2)]
    return ArchSpec("mobilenet_v2", tuple(blocks))


REFERENCE_MODELS: dict[str, Callable[[], ArchSpec]] = {
    "alexnet": alexnet,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
}


def reference_model(name: str) -> ArchSpec:
    """A reference architecture by name (see ``REFERENCE_MODELS``)."""
    try:
        return REFERENCE_MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown reference model {name!r} "
                         f"(allowed: {', '.join(REFERENCE_MODELS)})") from None
