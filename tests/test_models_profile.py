"""The profiler against published multiply-add counts and parameter counts, and by hand."""

from __future__ import annotations

import math

import pytest

from models.profile import profile_model
from models.reference import reference_model
from models.space import get_space
from models.spec import ArchSpec, Conv, Cut, Head

# Published multiply-adds at 3x224x224 (the figures) and parameter counts (torchvision).
PUBLISHED = {
    "vgg16": (15.5e9, 138.36e6),
    "resnet50": (4.1e9, 25.56e6),
    "mobilenet_v2": (0.30e9, 3.50e6),
    "resnet18": (1.8e9, 11.69e6),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_reference_models_match_published_counts(name: str) -> None:
    p = profile_model(reference_model(name), (3, 224, 224), num_classes=1000)
    macs, params = PUBLISHED[name]
    assert p.total_flops / 2 == pytest.approx(macs, rel=0.02)
    assert p.total_params == pytest.approx(params, rel=0.005)


def test_single_conv_by_hand() -> None:
    spec = ArchSpec("one", (Conv(16, 3, 2, bn=False), Head()))
    p = profile_model(spec, (3, 32, 32), num_classes=10)
    conv, head = p.blocks
    assert conv.out_shape == (16, 16, 16)
    assert conv.flops == 2 * (3 * 9) * 16 * 16 * 16  # 2 x MACs per output element
    assert conv.params == 3 * 9 * 16 + 16
    assert head.flops == 2 * 16 * 10 and head.params == 16 * 10 + 10
    assert head.out_shape == (10,)
    # Peak: input + output activation of the convolution, plus its weights, float32.
    assert conv.peak_memory_bytes == 4 * (3 * 32 * 32 + 16 * 16 * 16) + 4 * conv.params


def test_sent_bits_with_and_without_compression() -> None:
    spec = get_space("tiny").decode([0] * 9)
    plain = profile_model(spec, (3, 224, 224))
    assert plain.sent_bits(0, input_bits_per_element=8) == 3 * 224 * 224 * 8
    c, h, w = plain.activation_shape(2)
    assert plain.sent_bits(2) == c * h * w * 32
    squeezed = profile_model(spec, (3, 224, 224), cuts=[Cut(2, 0.25, 8)])
    assert squeezed.sent_bits(2) == math.ceil(c / 4) * h * w * 8
    codec = squeezed.codec(2)
    assert codec is not None
    assert codec.encoder_flops == 2 * c * (c // 4) * h * w
    assert codec.decoder_flops == codec.encoder_flops
    assert squeezed.total_flops == plain.total_flops  # codec costs are reported apart


def test_profile_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        profile_model(reference_model("resnet18"), (224, 224))
    with pytest.raises(ValueError, match="cannot run on input"):
        profile_model(reference_model("vgg16"), (3, 8, 8))


def test_segment_memory() -> None:
    p = profile_model(reference_model("vgg16"), (3, 224, 224), num_classes=1000)
    whole = p.segment_memory_bytes(0, len(p.blocks))
    assert whole > 4 * 138e6  # at least the weights
    assert p.segment_memory_bytes(0, 3) < whole
    assert p.segment_memory_bytes(2, 2) == 0


def test_small_models_profile_on_the_cpu_as_on_the_meta_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Small models run their counted forward pass on zeroed CPU memory (faster), big ones on
    the meta device: both give the same profile (FLOPs, parameters, shapes, peak memory, the
    codec's sent shape) for 4 tiny-space and 3 mobile-space architectures, with and without an
    8-bit compressing cut."""
    import itertools
    import random

    from torch import nn

    import models.profile as profiles

    tiny, mobile = get_space("tiny"), get_space("mobile")
    rng = random.Random(3)
    cases = [(tiny.decode(list(g)), (3, 64, 64))
             for g in itertools.islice(tiny.enumerate(), 0, 320, 80)]
    cases += [(mobile.decode([rng.randrange(b) for b in mobile.gene_bounds]), (3, 96, 96))
              for _ in range(3)]
    moved: list[str] = []
    real = nn.Module.to_empty

    def counted(self: nn.Module, **kwargs: object) -> nn.Module:
        moved.append(str(kwargs.get("device")))
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(nn.Module, "to_empty", counted)

    def profiles_now() -> list[object]:  # of the whole model, its codec included
        profiles._profile_whole.cache_clear()
        return [profiles._profile_whole(arch, shape, 10, 1.0, cuts) for arch, shape in cases
                for cuts in ((), (Cut(2, 0.5, 8),))]

    on_cpu = profiles_now()
    assert moved == ["cpu"] * 14  # every one of these ran on the CPU
    monkeypatch.setattr(profiles, "_CPU_MAX_BYTES", -1)  # everything on the meta device
    on_meta = profiles_now()
    profiles._profile_whole.cache_clear()
    assert len(moved) == 14
    assert on_cpu == on_meta


def test_a_compressed_profile_is_the_plain_one_with_its_codecs() -> None:
    """:func:`profile_model` profiles an architecture once and adds each cut's codec, profiled
    alone; the reference is one counted forward pass of the whole compressed model. Equal
    (FLOPs, parameters, shapes, peak memory of every block; each codec's sent shape, FLOPs
    and parameters, in order) for 40 (architecture, cuts) cases: tiny space at 3x64x64 and
    1x28x28, mobile space at 3x96x96 and two reference models, with one to three cuts of
    every bottleneck and bit width, plain cuts and repeated ones among them. Also catches a
    codec placed after the wrong block (its channels would differ)."""
    import random

    import models.profile as profiles
    from models.spec import BIT_WIDTHS, BOTTLENECKS

    rng = random.Random(11)
    tiny, mobile = get_space("tiny"), get_space("mobile")
    archs = [(tiny.decode([rng.randrange(b) for b in tiny.gene_bounds]), shape)
             for shape in ((3, 64, 64), (1, 28, 28)) for _ in range(7)]
    archs += [(mobile.decode([rng.randrange(b) for b in mobile.gene_bounds]), (3, 96, 96))
              for _ in range(4)]
    archs += [(reference_model("resnet18"), (3, 64, 64)),
              (reference_model("mobilenet_v2"), (3, 64, 64))]
    compared = 0
    for arch, shape in archs:
        for _ in range(2):
            cuts = [Cut(rng.randrange(1, arch.n_blocks), rng.choice(BOTTLENECKS),
                        rng.choice(BIT_WIDTHS)) for _ in range(rng.randint(1, 3))]
            cuts = list({c.position: c for c in cuts}.values())  # one cut per position
            if rng.random() < 0.3:
                cuts.append(cuts[0])  # the same cut twice: one codec
            composed = profile_model(arch, shape, 10, cuts=cuts)
            whole = profiles._profile_whole(arch, shape, 10, 1.0,
                                            tuple(sorted(cuts, key=lambda c: c.position)))
            assert composed == whole, (arch.name, cuts)
            compared += 1
    assert compared == 40
    assert profile_model(*archs[0], 10, cuts=[Cut(1, 0.25, 8)]).codecs  # a codec is there
