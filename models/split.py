"""Split a built model into per-node segments, and save or load each one on its own.

Segment i runs blocks [p_{i-1}, p_i) of the chain, where p are the cut positions (p_0 = 0 and
p_last = number of blocks are implied). A segment that starts at a compressing cut first decodes
the payload it receives; one that ends at a compressing cut encodes its output into the payload it
sends: a float tensor at 32 bits, or ``(uint8 tensor, scale, minimum)`` at 8 bits. A segment with no
blocks forwards the payload untouched. Run one after the other, the segments compute exactly what
the whole model computes in evaluation mode.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .build import ChainModel, CutCodec, build_model
from .spec import ArchSpec, Cut

__all__ = [
    "Payload",
    "Segment",
    "load_segment",
    "payload_bits",
    "run_segments",
    "save_segments",
    "split_model",
]

Payload = Tensor | tuple[Tensor, Tensor, Tensor]
_FORMAT = "jmsnas-segment-1"


class Segment(nn.Module):
    """Blocks [start, stop) of a :class:`ChainModel`, with the codecs at its two ends."""

    def __init__(self, model: ChainModel, index: int, start: int, stop: int) -> None:
        super().__init__()
        self.index, self.start, self.stop = index, start, stop
        self.blocks = nn.ModuleList(model.blocks[start:stop])
        self.decoder: CutCodec | None = None
        self.encoder: CutCodec | None = None
        if stop > start:
            if str(start) in model.codecs:
                self.decoder = model.codecs[str(start)]  # type: ignore[assignment]
            if str(stop) in model.codecs:
                self.encoder = model.codecs[str(stop)]  # type: ignore[assignment]
        self._meta: dict[str, Any] = {
            "spec": model.spec.to_json(),
            "in_channels": model.in_channels,
            "num_classes": model.num_classes,
            "width_scale": model.width_scale,
            "cuts": [[c.position, c.bottleneck, c.bits] for c in model.cuts],
        }

    def forward(self, payload: Payload) -> Payload:
        if not len(self.blocks):
            return payload
        if self.decoder is not None:
            x = self.decoder.decode(payload)
        else:
            assert isinstance(payload, Tensor)
            x = payload
        for block in self.blocks:
            x = block(x)
        return self.encoder.encode(x) if self.encoder is not None else x


def split_model(model: ChainModel) -> list[Segment]:
    """One segment per node: ``len(model.cuts) + 1`` segments, at the model's cut positions."""
    positions = [0] + [c.position for c in model.cuts] + [len(model.blocks)]
    return [Segment(model, i, a, b) for i, (a, b) in enumerate(itertools.pairwise(positions))]


def run_segments(segments: Sequence[Segment], x: Tensor) -> Tensor:
    """Run the segments one after the other (as the nodes of a path would)."""
    payload: Payload = x
    for seg in segments:
        payload = seg(payload)
    assert isinstance(payload, Tensor)
    return payload


def payload_bits(payload: Payload) -> int:
    """Bits of the activation data in a payload (the scale and minimum not counted)."""
    if isinstance(payload, tuple):
        return payload[0].numel() * 8
    return payload.numel() * payload.element_size() * 8


def save_segments(segments: Sequence[Segment], directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``segment_<i>.pt`` files, each loadable alone with :func:`load_segment`.

    A file holds the architecture (JSON), the cuts, the segment's bounds and only its own weights.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seg in segments:
        path = folder / f"segment_{seg.index}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"format": _FORMAT, **seg._meta, "index": seg.index, "start": seg.start,
                    "stop": seg.stop, "state_dict": seg.state_dict()}, tmp)
        os.replace(tmp, path)  # never a half-written segment file
        paths.append(path)
    return paths


def load_segment(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Segment:
    """Load one saved segment, building only its own layers."""
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a JMSNAS segment file")
    spec = ArchSpec.from_dict(json.loads(data["spec"]))
    cuts = [Cut(int(p), float(b), int(bits)) for p, b, bits in data["cuts"]]
    with torch.device("meta"):
        model = build_model(spec, data["in_channels"], data["num_classes"],
                            width_scale=data["width_scale"], cuts=cuts)
    seg = Segment(model, data["index"], data["start"], data["stop"])
    seg.to_empty(device=device)
    seg.load_state_dict(data["state_dict"], strict=True)
    seg.eval()
    return seg
