"""Proxy training: determinism, failures reported not raised, accuracy and ranking on mnist5k."""

from __future__ import annotations

import math

import pytest
import torch

from models.data import Dataset, load_dataset
from models.space import get_space
from models.spec import ArchSpec, Conv, Cut, Head, Pool
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
    learnt, _ = _accuracy_floors(data)  # no learning (untrained, majority) + 5 std errors
    assert learnt < a.accuracy <= 1.0
    c = proxy_accuracy(tiny_arch(), data, SMALL, seed=4)
    assert c.ok


def test_accuracy_does_not_depend_on_the_callers_torch_threads() -> None:
    """A search's workers=1 trains in the main process (torch's default thread count, the
    machine's cores), workers=2 in one-thread workers: one cache key, so the accuracy must not
    depend on which. Two threads split a convolution's sums differently; without
    :func:`models.train.one_thread` these two accuracies differ (0.570 and 0.575)."""
    data = load_dataset("mnist5k", seed=0)
    budget = ProxyBudget(epochs=2, subset=None, width_scale=1.0, batch_size=32, lr=0.01)
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got.append(proxy_accuracy(tiny_arch(), data, budget, seed=1).accuracy)
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert got[0] == got[1], got


TRAINED = ProxyBudget(epochs=4, subset=None, width_scale=1.0, batch_size=32, lr=0.01)
"""Enough training for tiny_arch to learn digits (0.2-0.3 s): 0.91-0.95 over seeds 0-2, with or
without an 8-bit half-width cut at position 2."""


def _accuracy_floors(data: Dataset) -> tuple[float, float]:
    """Two levels a trained proxy must clear on ``data``'s validation part, both computed
    without the code under test: (1) what no learning gives (the untrained tiny_arch, seed 0,
    or the majority class, whichever is higher) plus five binomial standard errors; (2) a
    nearest-centroid classifier on the flattened pixels, trained on the same training part,
    minus two binomial standard errors (a CNN trained for four epochs should at least match
    it; logistic regression reaches about 0.96 here)."""
    from sklearn.neighbors import NearestCentroid

    from models.build import build_model

    n = data.y_val.numel()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(tiny_arch(), data.x_train.shape[1], data.num_classes)
    with torch.no_grad():
        untrained = float((model.eval()(data.x_val).argmax(1) == data.y_val).float().mean())
    majority = float(torch.bincount(data.y_val).max()) / n
    chance = max(untrained, majority)
    nc = NearestCentroid().fit(data.x_train.reshape(data.x_train.shape[0], -1).numpy(),
                               data.y_train.numpy())
    centroid = float(nc.score(data.x_val.reshape(n, -1).numpy(), data.y_val.numpy()))
    assert 0.8 < centroid < 0.95  # the reference itself is sane (0.88 on digits, seed 0)

    def se(p: float) -> float:
        return math.sqrt(p * (1 - p) / n)

    return chance + 5 * se(chance), centroid - 2 * se(centroid)


def test_training_with_compressed_cuts() -> None:
    """A model with an 8-bit, half-width cut learns: its validation accuracy (359 digits)
    clears chance (the untrained model or the majority class) by five binomial standard errors
    and reaches a nearest-centroid classifier's level up to two standard errors (about 0.85).

    Catches a cut whose codec destroys the activation (a constant, a wrong dequantisation
    scale, a bottleneck that drops the signal), training that does not update the model, and
    accuracy measured on the wrong labels; the floors come from sklearn and an untrained copy,
    not from proxy_accuracy."""
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, TRAINED, seed=0, cuts=[Cut(2, 0.5, 8)])
    assert r.ok, r
    chance_floor, centroid_floor = _accuracy_floors(data)
    assert r.accuracy > chance_floor, (r.accuracy, chance_floor)
    assert r.accuracy >= centroid_floor, (r.accuracy, centroid_floor)


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
    sp = get_space("mobile")
    data = load_dataset("mnist5k", seed=0)
    r = proxy_accuracy(sp.decode(REFERENCE_GENOME), data, ProxyBudget(), seed=0)
    assert r.ok and r.accuracy >= 0.95, r


@pytest.mark.slow
def test_accuracy_ranks_architectures_by_capacity() -> None:
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
    """Training on CUDA learns as training on the CPU does: it clears the chance and
    nearest-centroid floors of :func:`_accuracy_floors`, and its accuracy is within four
    binomial standard errors of the CPU run of the same seed and budget (the same training up
    to floating-point differences between devices); a rerun on CUDA agrees to within 0.02
    (cuDNN may not be bit-exact).

    Catches data or labels not moved to the GPU consistently, a model left untrained on CUDA,
    and a device-dependent bug that makes CUDA training learn differently from the CPU's."""
    data = load_dataset("digits", seed=0)
    r = proxy_accuracy(tiny_arch(), data, TRAINED, seed=0, device="cuda")
    assert r.ok, r
    chance_floor, centroid_floor = _accuracy_floors(data)
    assert r.accuracy > chance_floor and r.accuracy >= centroid_floor, r.accuracy
    cpu = proxy_accuracy(tiny_arch(), data, TRAINED, seed=0, device="cpu")
    p, n = cpu.accuracy, data.y_val.numel()
    assert abs(r.accuracy - p) <= 4 * math.sqrt(p * (1 - p) / n), (r.accuracy, p)
    again = proxy_accuracy(tiny_arch(), data, TRAINED, seed=0, device="cuda")
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


# -- gradients through an 8-bit cut -------------------------------------------------------------


def _quantised(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-sample min-max quantisation to 2**bits levels and back, written out here."""
    flat = z.reshape(z.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, 1, 1, 1)
    step = (flat.max(dim=1).values.reshape(-1, 1, 1, 1) - lo) / (2**bits - 1)
    return torch.round((z - lo) / step) * step + lo


def _gradient_problems(arch: ArchSpec, position: int, x: torch.Tensor,
                       y: torch.Tensor) -> list[str]:
    """What is wrong with the gradients that reach the parameters before an 8-bit, half-width
    cut at ``position`` (the blocks before it and the bottleneck's encoder, the sender's
    side): not finite, all zero, or unlike the straight-through reference, computed by hand
    on a copy of the model: forward to the encoder's output z, quantise z by hand, run the
    rest from that value as a leaf, and carry its gradient back through z unchanged."""
    import copy

    from models.build import CutCodec, build_model

    torch.manual_seed(0)
    model = build_model(arch, x.shape[1], 10, width_scale=0.5, cuts=[Cut(position, 0.5, 8)])
    model.train()
    ref = copy.deepcopy(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    logits = model(x)
    loss_fn(logits, y).backward()

    codec = ref.codecs[str(position)]
    assert isinstance(codec, CutCodec)
    before = [*ref.blocks[:position].parameters(), *codec.encoder.parameters()]
    h = x
    for block in ref.blocks[:position]:
        h = block(h)
    z = codec.encoder(h)
    z_hat = _quantised(z.detach(), 8).requires_grad_()
    out = codec.decoder(z_hat)
    for block in ref.blocks[position:]:
        out = block(out)
    (g,) = torch.autograd.grad(loss_fn(out, y), z_hat, retain_graph=True)
    expected = torch.autograd.grad(z, before, grad_outputs=g)

    problems = []
    gap = float((logits - out).detach().abs().max())
    if gap > 1e-5 * float(out.detach().abs().max()):
        problems.append(f"outputs differ from the quantised model's by up to {gap:.3g}")
    names = [n for n, _ in model.named_parameters()
             if n.startswith(tuple(f"blocks.{i}." for i in range(position)))
             or n.startswith(f"codecs.{position}.encoder.")]
    got = dict(model.named_parameters())
    assert len(names) == len(expected) > 0
    for name, want in zip(names, expected, strict=True):
        grad = got[name].grad
        if grad is None or not bool(torch.isfinite(grad).all()):
            problems.append(f"{name}: no finite gradient")
        elif not bool(grad.abs().sum() > 0):
            problems.append(f"{name}: zero gradient")
        elif not torch.allclose(grad, want, rtol=1e-4, atol=1e-6 * float(want.abs().max())):
            problems.append(f"{name}: not the straight-through gradient")
    return problems


def test_gradients_reach_the_blocks_before_an_8_bit_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every parameter before an 8-bit cut (the blocks and the bottleneck's encoder) gets a
    finite, non-zero gradient, equal to the straight-through one computed by hand, while the
    forward pass computes the quantised model.

    Catches a quantiser without the straight-through estimator, shown here by patching the
    codec: with a plain round the blocks before the cut get no gradient at all (they would
    never train), and with the min-max quantiser used without the estimator they get only
    the gradient that leaks through each sample's minimum and maximum; and a training forward
    that skips the quantisation (its outputs would not be the quantised model's)."""
    from models.build import CutCodec, dequantize, quantize

    arch = ArchSpec("cnn4", (Conv(8), Conv(8), Pool(), Conv(16, stride=2), Head()))
    data = load_dataset("digits", seed=0)
    x, y = data.x_train[:32], data.y_train[:32]
    assert _gradient_problems(arch, 3, x, y) == []

    def plain_round(self: CutCodec, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.round(self.encoder(z) * 16) / 16)

    def no_estimator(self: CutCodec, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(dequantize(*quantize(self.encoder(z), self.cut.bits)))

    def unquantised(self: CutCodec, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(z))

    monkeypatch.setattr(CutCodec, "forward", plain_round)
    problems = _gradient_problems(arch, 3, x, y)
    assert problems and all("zero gradient" in p or "outputs" in p for p in problems), problems
    monkeypatch.setattr(CutCodec, "forward", no_estimator)
    problems = _gradient_problems(arch, 3, x, y)
    assert any("not the straight-through gradient" in p for p in problems), problems
    monkeypatch.setattr(CutCodec, "forward", unquantised)
    assert any("outputs" in p for p in _gradient_problems(arch, 3, x, y))
