"""Segments compose to the whole model; saved segments load alone; payload sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.build import build_model, dequantize, quantize
from models.profile import profile_model
from models.reference import reference_model
from models.space import get_space
from models.spec import Cut
from models.split import load_segment, payload_bits, run_segments, save_segments, split_model


def model_with(cuts: list[Cut], seed: int = 0) -> torch.nn.Module:
    spec = get_space("tiny").decode([1, 1, 0, 0, 1, 1, 1, 0, 0])
    torch.manual_seed(seed)
    return build_model(spec, 3, 10, cuts=cuts).eval()


@pytest.mark.parametrize("cuts", [
    [Cut(3), Cut(6)],
    [Cut(0), Cut(8)],                      # device sends the raw input; cloud sends logits
    [Cut(3), Cut(3)],                      # the middle node only forwards
    [Cut(2, 0.5, 32), Cut(5, 1.0, 8)],
    [Cut(4, 0.25, 8), Cut(4, 0.25, 8)],
])
def test_segments_compose_to_the_whole_model_exactly(cuts: list[Cut]) -> None:
    model = model_with(cuts)
    x = torch.randn(5, 3, 32, 32)
    segments = split_model(model)  # type: ignore[arg-type]
    assert len(segments) == len(cuts) + 1
    with torch.no_grad():
        assert torch.equal(run_segments(segments, x), model(x))


def test_reference_model_splits_exactly() -> None:
    torch.manual_seed(0)
    model = build_model(reference_model("resnet18"), 3, 10, width_scale=0.25,
                        cuts=[Cut(2), Cut(7)]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(run_segments(split_model(model), x), model(x))


def test_eight_bit_cut_is_within_the_quantisation_error() -> None:
    plain, quantised = model_with([Cut(4)]), model_with([Cut(4, 1.0, 8)])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        head = torch.nn.Sequential(*plain.blocks[:4])  # type: ignore[index]
        act = head(x)
        q, scale, lo = quantize(act)
        err = (dequantize(q, scale, lo) - act).abs().amax(dim=(1, 2, 3))
        assert torch.all(err <= scale.flatten() / 2 + 1e-6)  # nearest of 256 levels per sample
        segs = split_model(quantised)  # type: ignore[arg-type]
        payload = segs[0](x)
        assert isinstance(payload, tuple) and payload[0].dtype == torch.uint8
        full, approx = plain(x), run_segments(segs, x)
        assert (full - approx).abs().max() < 0.05 * full.abs().max()
        assert not torch.equal(full, approx)


def test_payload_bits_match_the_profile() -> None:
    cuts = [Cut(2, 0.5, 8), Cut(5)]
    model = model_with(cuts)
    profile = profile_model(model.spec, (3, 32, 32), cuts=cuts)  # type: ignore[arg-type]
    segs = split_model(model)  # type: ignore[arg-type]
    with torch.no_grad():
        first = segs[0](torch.randn(1, 3, 32, 32))
        second = segs[1](first)
    assert payload_bits(first) == profile.sent_bits(2)
    assert payload_bits(second) == profile.sent_bits(5)


def test_saved_segments_load_alone_and_give_the_same_output(tmp_path: Path) -> None:
    model = model_with([Cut(2, 0.5, 8), Cut(6)], seed=3)
    x = torch.randn(4, 3, 32, 32)
    paths = save_segments(split_model(model), tmp_path)  # type: ignore[arg-type]
    assert [p.name for p in paths] == ["segment_0.pt", "segment_1.pt", "segment_2.pt"]
    loaded = [load_segment(p) for p in paths]
    with torch.no_grad():
        assert torch.equal(run_segments(loaded, x), model(x))
    # A node holds only its own weights.
    own = sum(p.numel() for p in loaded[0].parameters())
    assert own < sum(p.numel() for p in model.parameters()) / 2


def test_bad_cuts_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Cut.bottleneck must be one of"):
        Cut(2, 0.3)
    with pytest.raises(ValueError, match=r"Cut.bits must be one of"):
        Cut(2, 1.0, 16)
    with pytest.raises(ValueError, match="cannot compress"):
        model_with([Cut(0, 0.5)])
    with pytest.raises(ValueError, match=r"Cut.position must be in 0..8"):
        model_with([Cut(12)])
    with pytest.raises(ValueError, match="different compression"):
        model_with([Cut(3, 0.5), Cut(3)])
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a JMSNAS segment file"):
        load_segment(tmp_path / "x.pt")


def test_quantisation_is_per_sample() -> None:
    x = torch.randn(4, 8, 5, 5)
    x[2] *= 100.0  # one sample with a much wider range must not coarsen the others
    q, scale, lo = quantize(x)
    assert scale.shape == (4, 1, 1, 1)
    q1, s1, lo1 = quantize(x[1:2])
    assert torch.equal(q[1:2], q1) and torch.equal(scale[1:2], s1) and torch.equal(lo[1:2], lo1)
    const = torch.full((2, 3, 4, 4), 0.7)
    qc, sc, loc = quantize(const)
    assert torch.equal(dequantize(qc, sc, loc), const)  # a constant tensor comes back exactly
