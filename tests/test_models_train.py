"""Proxy training: determinism, failures reported not raised, accuracy and ranking on mnist5k."""

from __future__ import annotations

import math

import pytest
import torch

from models.build import Cut
from models.data import load_dataset
from models.space import get_space
from models.spec import ArchSpec, Conv, Head, Pool
from models.train import ProxyBudget, proxy_accuracy, resolve_device

SMALL = ProxyBudget(epochs=2, subset=600, width_scale=0.5, batch_size=32)


def tiny_arch() -> ArchSpec:
    return ArchSpec("small-cnn", (Conv(8), Pool(), Conv(16, stride=2), Head()))


def test_same_seed_same_accuracy_and_global_rng_untouched() -> None:
    data = load_dataset("digits", seed=0)
    state = torch.random.get_rng_state()
    a = proxy_accuracy(tiny_arch(), data, SMALL, seed=3)
    b = proxy_accuracy(tiny_arch(), data, SMALL, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.ok and a.accuracy == b.accuracy
    assert 0.3 < a.accuracy <= 1.0  # far above chance (0.1) after two short epochs
    c = proxy_accuracy(tiny_arch(), data, SMALL, seed=4)
    assert c.ok


def test_training_with_compressed_cuts() -> None:
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, cuts=[Cut(2, 0.5, 8)])
    assert r.ok and r.accuracy > 0.3


def test_divergence_is_a_failed_evaluation() -> None:
    data = load_dataset("digits", seed=0)
    wild = ProxyBudget(epochs=2, subset=600, optimizer="sgd", lr=1e6, batch_size=32)
    r = proxy_accuracy(ArchSpec("lin", (Conv(8, bn=False, act="none"), Head())), data, wild)
    assert r.status == "diverged" and math.isnan(r.accuracy) and "loss" in r.message


def test_architecture_too_deep_for_the_input_is_a_failed_evaluation() -> None:
    data = load_dataset("digits", seed=0)  # 8x8 images
    deep = ArchSpec("deep", (Conv(8), Pool(), Pool(), Pool(), Pool(), Head()))
    r = proxy_accuracy(deep, data, SMALL)
    assert r.status == "failed" and math.isnan(r.accuracy) and r.message


def test_bad_budget_and_device() -> None:
    with pytest.raises(ValueError, match=r"ProxyBudget.epochs must be >= 1"):
        ProxyBudget(epochs=0)
    with pytest.raises(ValueError, match=r"ProxyBudget.optimizer must be adam or sgd"):
        ProxyBudget(optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be cpu, cuda or auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


REFERENCE_GENOME = [6, 1, 1, 6, 1, 1, 6, 1, 1, 6, 0, 1, 6, 0, 1, 9, 0, 0]


@pytest.mark.slow
def test_reference_architecture_reaches_95_percent_on_mnist5k() -> None:
    torch.set_num_threads(2)
    sp = get_space("mobile")
    data = load_dataset("mnist5k", seed=0)
    r = proxy_accuracy(sp.decode(REFERENCE_GENOME), data, ProxyBudget(), seed=0)
    assert r.ok and r.accuracy >= 0.95, r


@pytest.mark.slow
def test_accuracy_ranks_architectures_by_capacity() -> None:
    torch.set_num_threads(2)
    sp = get_space("mobile")
    data = load_dataset("mnist5k", seed=0)
    ladder = [
        ArchSpec("conv8", (Conv(8, 3, 2), Head())),
        ArchSpec("conv16-conv32", (Conv(16, 3, 2), Conv(32, 3, 2), Head())),
        ArchSpec("cnn", (Conv(32), Pool(), Conv(64), Pool(), Head(hidden=(128,)))),
        sp.decode([0] * 9 + [9, 0, 0] * 3),
        sp.decode(REFERENCE_GENOME),
    ]
    acc = [proxy_accuracy(a, data, ProxyBudget(), seed=0).accuracy for a in ladder]
    assert acc == sorted(acc) and len(set(acc)) == len(acc), acc


@pytest.mark.gpu
def test_proxy_training_on_cuda() -> None:
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda")
    assert r.ok and r.accuracy > 0.3
    again = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda")
    assert again.accuracy == pytest.approx(r.accuracy, abs=0.02)  # cuDNN may not be bit-exact


@pytest.mark.gpu
def test_a_variant_fine_tunes_on_cuda_from_weights_kept_on_the_cpu() -> None:
    """Catches weights kept on the GPU (a worker without CUDA could not load them) or a
    bottleneck fitted on one device and run on another."""
    data = load_dataset("digits", seed=0)
    parent = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda", keep_state=True)
    assert parent.ok and parent.state is not None
    assert all(v.device.type == "cpu" for v in parent.state.values())
    variant = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, device="cuda",
                             cuts=[Cut(2, 0.5, 8)], init_state=parent.state)
    assert variant.ok and abs(variant.accuracy - parent.accuracy) < 0.1


def test_dropout_is_seeded_too() -> None:
    data = load_dataset("digits", seed=0)
    arch = ArchSpec("dropout", (Conv(8), Pool(), Head(hidden=(32,), dropout=0.5)))
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever the caller's generator holds
        results.append(proxy_accuracy(arch, data, SMALL, seed=0).accuracy)
    assert results[0] == results[1]


# -- compressed variants inherit their parent's weights ---------------------------------------


def _outputs(spec: ArchSpec, state: dict[str, torch.Tensor], cuts: list[Cut],
             x: torch.Tensor) -> torch.Tensor:
    from models.build import build_model

    model = build_model(spec, x.shape[1], 10, width_scale=SMALL.width_scale, cuts=cuts)
    model.load_state_dict(state, strict=False)
    return model.eval()(x)


def test_a_variant_starts_from_its_parents_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a variant trained from a fresh initialisation, parent weights loaded into the
    wrong layers, or a bottleneck left at its random start: the model that fine-tuning receives
    already computes nearly the parent's outputs (much nearer than with a random bottleneck),
    and an uncompressed cut (bottleneck 1, 32 bits) computes exactly the parent's."""
    import models.train as train_mod

    data = load_dataset("digits", seed=0)
    parent = proxy_accuracy(tiny_arch(), data, SMALL, seed=0, keep_state=True)
    assert parent.ok and parent.state is not None
    x = data.x_val[:64]
    seen: dict[str, object] = {}
    real = train_mod._train

    def spy(model: torch.nn.Module, *args: object, finetune: bool) -> object:
        with torch.no_grad():
            seen["out"] = model.eval()(x)
        seen["finetune"] = finetune
        return real(model, *args, finetune=finetune)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "_train", spy)
    cuts = [Cut(2, 0.5, 8)]
    proxy_accuracy(tiny_arch(), data, SMALL, seed=0, cuts=cuts, init_state=parent.state)
    assert seen["finetune"] is True
    with torch.no_grad():
        want = _outputs(tiny_arch(), parent.state, [], x)
        same = _outputs(tiny_arch(), parent.state, [Cut(2, 1.0, 32)], x)
        unfitted = _outputs(tiny_arch(), parent.state, cuts, x)  # codec at its random start
    assert torch.equal(want, same)

    def error(y: torch.Tensor) -> float:
        return float((y - want).abs().mean() / want.abs().mean())

    out = seen["out"]
    assert isinstance(out, torch.Tensor)
    assert error(out) < 0.5 * error(unfitted)


def test_a_variant_fine_tunes_briefly_and_stays_near_its_parent() -> None:
    """Catches a variant that ignores init_state (it would train the full schedule from
    scratch: slower and, after a fraction of the steps, far worse) and one whose fine-tuning
    does not run (weights unchanged)."""
    data = load_dataset("digits", seed=0)
    budget = ProxyBudget(epochs=4, subset=800, width_scale=0.5, batch_size=32,
                         finetune_fraction=0.25)
    parent = proxy_accuracy(tiny_arch(), data, budget, seed=0, keep_state=True)
    assert parent.ok and parent.state is not None
    cuts = [Cut(2, 1.0, 8)]
    variant = proxy_accuracy(tiny_arch(), data, budget, seed=0, cuts=cuts,
                             init_state=parent.state, keep_state=True)
    scratch = proxy_accuracy(tiny_arch(), data, ProxyBudget(epochs=1, subset=200,
                             width_scale=0.5, batch_size=32), seed=0, cuts=cuts)
    assert variant.ok and variant.state is not None
    assert abs(variant.accuracy - parent.accuracy) < 0.05
    assert variant.accuracy > scratch.accuracy  # a quarter of the steps from scratch is worse
    changed = [k for k, v in variant.state.items()
               if v.dtype.is_floating_point and not torch.equal(v, parent.state[k])]
    assert changed  # fine-tuning moved the weights


def test_init_state_that_does_not_fit_is_refused() -> None:
    """Catches weights of another architecture loaded silently (strict=False would allow it)."""
    data = load_dataset("digits", seed=0)
    other = ArchSpec("other", (Conv(4), Head()))
    parent = proxy_accuracy(other, data, SMALL, seed=0, keep_state=True)
    assert parent.state is not None
    with pytest.raises(ValueError, match="init_state does not fit"):
        proxy_accuracy(tiny_arch(), data, SMALL, seed=0, init_state=parent.state)


def test_seed_sd_is_the_pooled_within_architecture_deviation() -> None:
    """Catches a deviation over architectures (between-architecture spread) or ddof 0: two
    seeds of values a and b give |a - b| / sqrt(2) for every architecture."""
    from models.train import seed_sd

    acc = [[0.80, 0.90, 0.70], [0.82, 0.88, 0.72]]
    assert seed_sd(acc) == pytest.approx(0.02 / math.sqrt(2))
    assert math.isnan(seed_sd([[0.8, 0.9]]))
    assert seed_sd([[0.8, math.nan], [0.9, 0.5]]) == pytest.approx(0.1 / math.sqrt(2))


def test_a_fitted_bottleneck_reconstructs_activations_of_its_rank() -> None:
    """Catches a bottleneck started at random (or from the wrong eigenvectors, or with a ReLU
    after the decoder, which would zero the negative half): activations that lie in a
    k-dimensional affine subspace, k = the channels kept, come back exactly."""
    from models.build import CutCodec

    gen = torch.Generator().manual_seed(0)
    channels, kept = 16, 8
    basis = torch.randn(kept, channels, generator=gen)
    coords = torch.randn(64 * 5 * 5, kept, generator=gen)
    offset = torch.randn(channels, generator=gen)
    x = (coords @ basis + offset).reshape(64, 5, 5, channels).permute(0, 3, 1, 2).contiguous()
    codec = CutCodec(channels, Cut(1, 0.5, 32))
    assert codec.sent_channels == kept
    with torch.no_grad():
        assert not torch.allclose(codec(x), x, atol=1e-2)
        codec.fit(x)
        y = codec(x)
    assert float((y - x).abs().max()) < 1e-4 * float(x.abs().max())
    assert float(x.min()) < 0  # negative activations survive the decoder
