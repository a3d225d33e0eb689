import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from neve_tune import NeuralVelocity, gaussian_probe
from neve_tune.velocity import neuron_axis, select_layers


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1, 1))


def _by_hand(outputs: list[list[np.ndarray]], mu: float = 0.5):
    """outputs[t][layer] is a [samples*positions, neurons] matrix; returns V^t, D^t, v^t."""
    vel = [np.zeros(o.shape[1]) for o in outputs[0]]
    series = []
    for t in range(1, len(outputs)):
        new = []
        for li, (cur, prev) in enumerate(zip(outputs[t], outputs[t - 1])):
            rho = np.array([_cos(cur[:, i], prev[:, i]) for i in range(cur.shape[1])])
            new.append((1 - rho) - mu * vel[li])
        V = float(np.mean(np.abs(np.concatenate(new))))
        D = None if t < 2 else float(np.mean([np.mean((n - o) ** 2) for n, o in zip(new, vel)]))
        series.append((V, D, [n.copy() for n in new]))
        vel = new
    return series


def _perturb(model: nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_formula_matches_hand_computation_on_tiny_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    probe = gaussian_probe((3,), num_samples=5, seed=1)
    nv = NeuralVelocity(model, probe, momentum=0.5)
    outs = []

    def snapshot():
        with torch.no_grad():
            h = model[0](probe)
            return [
                h.numpy().astype(np.float64),
                model[2](torch.tanh(h)).numpy().astype(np.float64),
            ]

    outs.append(snapshot())
    first = nv.measure()
    assert first.epoch == 0 and first.model_velocity is None and first.velocity_change is None
    reports = []
    for t in range(1, 5):
        _perturb(model, seed=t)
        outs.append(snapshot())
        reports.append(nv.measure())
    expected = _by_hand(outs)
    for rep, (V, D, v) in zip(reports, expected):
        assert rep.model_velocity == pytest.approx(V, rel=1e-5)
        if D is None:
            assert rep.velocity_change is None
        else:
            assert rep.velocity_change == pytest.approx(D, rel=1e-4)
        np.testing.assert_allclose(rep.layers["0"].numpy(), v[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rep.layers["2"].numpy(), v[1], rtol=1e-4, atol=1e-6)
    assert [r.epoch for r in reports] == [1, 2, 3, 4]


def test_momentum_sign_is_minus():
    # a constant change (1 - rho = c each epoch) gives v1 = c, v2 = c - mu*c
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
    probe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    nv = NeuralVelocity(model, probe, momentum=0.5)
    nv.measure()  # y0 = (1, 0)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0]]))  # y1 = (1, 1): cos = 1/sqrt2
    v1 = nv.measure().layers["0"].item()
    c = 1 - 1 / math.sqrt(2)
    assert v1 == pytest.approx(c, rel=1e-6)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0]]))  # y2 = (0, 1): cos(y2, y1) = 1/sqrt2
    v2 = nv.measure().layers["0"].item()
    assert v2 == pytest.approx(c - 0.5 * c, rel=1e-6)


def test_conv_neurons_are_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv)
    probe = gaussian_probe((2, 5, 5), num_samples=4, seed=0)
    nv = NeuralVelocity(model, probe)
    with torch.no_grad():
        y0 = conv(probe)
    nv.measure()
    _perturb(model, 3)
    with torch.no_grad():
        y1 = conv(probe)
    v = nv.measure().layers["0"]
    assert v.shape == (3,)
    for c in range(3):
        a, b = y1[:, c].flatten().double().numpy(), y0[:, c].flatten().double().numpy()
        assert v[c].item() == pytest.approx(1 - _cos(a, b), abs=1e-6)


def test_linear_over_tokens_uses_last_dim_in_a_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=5, depth=2
    )
    probe = gaussian_probe((3, 32, 32), num_samples=3, seed=0)
    nv = NeuralVelocity(vit, probe)
    qkv = vit.blocks[0].attn.qkv
    norm = vit.blocks[0].norm1
    caught = {}
    hooks = [
        qkv.register_forward_hook(lambda m, i, o: caught.__setitem__("qkv", o.detach().clone())),
        norm.register_forward_hook(lambda m, i, o: caught.__setitem__("norm", o.detach().clone())),
    ]
    vit.eval()
    with torch.no_grad():
        vit(probe)
    before = dict(caught)
    nv.measure()
    _perturb(vit, 5, scale=0.05)
    with torch.no_grad():
        vit(probe)
    after = dict(caught)
    for h in hooks:
        h.remove()
    rep = nv.measure()
    for key, name in (("qkv", "blocks.0.attn.qkv"), ("norm", "blocks.0.norm1")):
        y0, y1 = before[key], after[key]
        assert y1.ndim == 3  # [N, tokens, C]
        v = rep.layers[name]
        assert v.shape == (y1.shape[-1],)
        for i in (0, 7, y1.shape[-1] - 1):
            a = y1[..., i].flatten().double().numpy()
            b = y0[..., i].flatten().double().numpy()
            assert v[i].item() == pytest.approx(1 - _cos(a, b), abs=1e-5)


def test_layer_norm_axis_and_subclasses():
    assert neuron_axis(nn.LayerNorm(4)) == -1
    assert neuron_axis(nn.Linear(2, 2)) == -1
    assert neuron_axis(nn.BatchNorm1d(4)) == 1
    assert neuron_axis(nn.GroupNorm(2, 4)) == 1

    class MyLinear(nn.Linear):  # a subclass takes its base class's axis
        pass

    assert neuron_axis(MyLinear(2, 2)) == -1 and neuron_axis(nn.Conv2d(1, 2, 1)) == 1
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
    nv = NeuralVelocity(model, gaussian_probe((3, 4), 5))
    nv.measure()
    _perturb(model, 1)
    assert nv.measure().layers["1"].shape == (6,)


def test_zero_vector_conventions():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
        lin.bias.zero_()
    nv = NeuralVelocity(nn.Sequential(lin), torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    nv.measure()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    v = nv.measure().layers["0"]
    # neuron 0: zero both times -> rho 1 -> v 0; neuron 1 and 2: exactly one zero -> rho 0 -> v 1
    assert v.tolist() == [0.0, 1.0, 1.0]


def test_probe_forward_leaves_model_state_and_rng_untouched():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + 0.0 * torch.rand_like(x)  # consumes the global RNG

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Dropout(0.5),
        Noisy(),
        nn.Flatten(),
        nn.Linear(4 * 36, 3),
    )
    model.train()
    model[1].eval()  # a frozen BN must stay in eval
    x = torch.randn(16, 1, 8, 8)
    model(x)  # some running stats
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nv = NeuralVelocity(model, gaussian_probe((1, 8, 8), 10))
    rng = torch.get_rng_state()
    nv.measure()
    _perturb(model, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    nv.measure()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_wrapped_and_compiled_models_measure_like_the_plain_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    probe = gaussian_probe((4,), 10)
    plain = NeuralVelocity(model, probe)
    dp = NeuralVelocity(nn.DataParallel(model), probe)
    compiled = NeuralVelocity(torch.compile(model), probe)
    for nv in (plain, dp, compiled):
        nv.measure()
    _perturb(model, 1)
    reps = [nv.measure() for nv in (plain, dp, compiled)]
    assert set(reps[1].layers) == set(reps[0].layers) == {"0", "2"}
    assert reps[1].model_velocity == pytest.approx(reps[0].model_velocity)
    assert reps[2].model_velocity == pytest.approx(reps[0].model_velocity)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_halves_memory_and_stays_close(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)
    )
    probe = gaussian_probe((1, 8, 8), 20)
    full = NeuralVelocity(model, probe)
    half = NeuralVelocity(model, probe, storage_dtype=dtype, storage="cpu")
    full.measure(), half.measure()
    for step in range(3):
        _perturb(model, step, scale=0.05)
        a, b = full.measure(), half.measure()
        tol = 0.02 if dtype == torch.float16 else 0.1
        assert b.model_velocity == pytest.approx(a.model_velocity, rel=tol)
    # the references are what the storage dtype halves: the bytes saved are those of the
    # half-precision references themselves (sums and velocities stay float32 in both)
    assert full.exact_reference_bytes() == 2 * half.exact_reference_bytes() > 0
    assert full.nbytes - half.nbytes == half.exact_reference_bytes()


def test_autocast_outputs_are_computed_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = gaussian_probe((4,), 32)
    amp = NeuralVelocity(model, probe, autocast_dtype=torch.bfloat16)
    ref = NeuralVelocity(model, probe)
    amp.measure(), ref.measure()
    _perturb(model, 1, scale=0.2)
    a, r = amp.measure(), ref.measure()
    assert a.layers["0"].dtype == torch.float32
    assert a.model_velocity == pytest.approx(r.model_velocity, rel=0.05)


def test_chunked_probe_equals_whole_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 3))
    probe = gaussian_probe((1, 8, 8), 25)
    whole, chunked = NeuralVelocity(model, probe), NeuralVelocity(model, probe, batch_size=7)
    whole.measure(), chunked.measure()
    for s in range(3):
        _perturb(model, s)
        a, b = whole.measure(), chunked.measure()
        assert b.model_velocity == pytest.approx(a.model_velocity, rel=1e-5)


def test_state_dict_round_trip_continues_the_series():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    probe = gaussian_probe((4,), 10)
    a = NeuralVelocity(model, probe)
    a.measure()
    _perturb(model, 1)
    a.measure()
    b = NeuralVelocity(model, probe)
    b.load_state_dict(a.state_dict())
    _perturb(model, 2)
    ra, rb = a.measure(), b.measure()
    assert rb.epoch == ra.epoch == 2
    assert rb.model_velocity == ra.model_velocity
    assert rb.velocity_change == ra.velocity_change


def test_select_layers_by_name_type_and_predicate():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)
    )
    assert list(select_layers(model)) == ["0", "1", "4"]
    assert list(select_layers(model, ["1"])) == ["1"]
    assert list(select_layers(model, [nn.Conv2d])) == ["0"]
    assert list(select_layers(model, lambda n, m: isinstance(m, nn.ReLU))) == ["2"]


# ----------------------------------------------------------------- bad input
def test_bad_momentum():
    model = nn.Sequential(nn.Linear(2, 2))
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            NeuralVelocity(model, torch.zeros(3, 2), momentum=bad)
    with pytest.raises(TypeError, match="momentum"):
        NeuralVelocity(model, torch.zeros(3, 2), momentum="0.5")


def test_empty_probe():
    with pytest.raises(ValueError, match="probe is empty"):
        NeuralVelocity(nn.Sequential(nn.Linear(2, 2)), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="num_samples"):
        gaussian_probe((2,), num_samples=0)


def test_probe_that_does_not_fit_names_its_shape_and_the_model_error():
    nv = NeuralVelocity(nn.Sequential(nn.Linear(4, 2)), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"probe of shape \(5, 3\) does not fit.*mat1 and mat2"):
        nv.measure()


def test_model_with_no_layer_to_monitor():
    with pytest.raises(ValueError, match="selects no layer"):
        NeuralVelocity(nn.Sequential(nn.ReLU()), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="not modules of the model"):
        NeuralVelocity(nn.Sequential(nn.Linear(2, 2)), torch.zeros(2, 2), layers=["nope"])


def test_a_model_that_is_one_layer_is_told_to_wrap_it():
    """A bare nn.Linear is of a default type, yet has no layer below it: the error says so
    instead of listing Linear among the types it did not find."""
    with pytest.raises(ValueError, match=r"is itself one layer has none: wrap it in nn.Sequential"):
        NeuralVelocity(nn.Linear(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"selects no layer[^(]*$"):
        NeuralVelocity(nn.Sequential(nn.ReLU()), torch.zeros(2, 2))


def test_default_layers_the_probe_never_calls_are_dropped_with_a_warning():
    # MultiheadAttention uses out_proj through its weight, never calls it
    model = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    nv = NeuralVelocity(model, gaussian_probe((5, 8), 4))
    with pytest.warns(UserWarning, match="self_attn.out_proj"):
        nv.measure()
    assert "self_attn.out_proj" not in nv.layers and "linear1" in nv.layers
    _perturb(model, 1, scale=0.1)
    assert nv.measure().model_velocity > 0
    named = NeuralVelocity(model, gaussian_probe((5, 8), 4), layers=["self_attn.out_proj"])
    with pytest.raises(ValueError, match="not called by the probe forward"):
        named.measure()


def test_outputs_modified_in_place_downstream_measure_as_if_untouched():
    # BatchNorm's output is rewritten by ReLU(inplace=True) after the hook saw it: its velocity
    # must be that of the same network with an out-of-place ReLU, epoch after epoch
    def net(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(144, 3),
        )

    probe = gaussian_probe((1, 8, 8), 6)
    models = [net(inplace=True), net(inplace=False)]
    monitors = [NeuralVelocity(m, probe) for m in models]
    for nv in monitors:
        nv.measure()
    for step in range(3):
        for m in models:
            _perturb(m, step, scale=0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # found at epoch 0: no warning later
            inplace, plain = (nv.measure() for nv in monitors)
        assert inplace.layers["1"].shape == (4,) and plain.layers["1"].abs().sum() > 0
        assert torch.allclose(inplace.layers["1"], plain.layers["1"], atol=1e-6)
        assert inplace.model_velocity == pytest.approx(plain.model_velocity, rel=1e-6)


# ----------------------------------------------------------------- sketched references
def _tokens_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 5))


def _conv_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 64, 4),
    )


@pytest.mark.parametrize(
    "make, shape, dim",
    [
        (_tokens_model, (10, 6), 16),  # rows: [N, T, C] outputs, tokens on the last dim
        (_conv_model, (2, 8, 8), 16),  # R = 64 positions > width: per-neuron position signs
        (_conv_model, (2, 8, 8), 64),  # R == width
        (_conv_model, (2, 8, 8), 256),  # R < width: 4 sample groups
    ],
)
def test_sketch_is_an_unbiased_estimate_of_the_exact_velocity(make, shape, dim):
    torch.manual_seed(0)
    model = make()
    probe = gaussian_probe(shape, 40, seed=1)
    exact = NeuralVelocity(model, probe)
    sketches = [
        NeuralVelocity(model, probe, reference="sketch", sketch_dim=dim, sketch_seed=s)
        for s in range(60)
    ]
    for nv in (exact, *sketches):
        nv.measure()
    assert any(s.width for s in sketches[0]._state.values())
    _perturb(model, 1, scale=0.1)
    want = exact.measure().model_velocity
    got = np.array([nv.measure().model_velocity for nv in sketches])
    assert got.mean() == pytest.approx(want, rel=0.05)  # the mean over seeds: no bias
    assert np.abs(got / want - 1).max() < 0.5
    assert len(set(got.tolist())) > 50  # the seed changes the signs


def test_sketch_tracks_the_exact_series_and_holds_far_less():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Flatten(),
        nn.Linear(16 * 256, 10),
    )
    probe = gaussian_probe((3, 16, 16), 50, seed=0)
    exact = NeuralVelocity(model, probe)
    sketch = NeuralVelocity(model, probe, reference="sketch", sketch_dim=256)
    exact.measure(), sketch.measure()
    assert [n for n, s in sketch._state.items() if not s.width] == [
        "5"
    ]  # the head: 50 values per neuron
    assert sketch.nbytes * 20 < exact.nbytes
    for step in range(4):
        _perturb(model, step, scale=0.03)
        a, b = exact.measure(), sketch.measure()
        assert b.epoch == a.epoch
        assert b.model_velocity == pytest.approx(a.model_velocity, rel=0.05)
        torch.testing.assert_close(b.layers["5"], a.layers["5"])  # exact layers stay exact
        if a.velocity_change is not None:
            assert b.velocity_change == pytest.approx(a.velocity_change, rel=0.2)


def test_sketch_keeps_small_layers_exact_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    probe = gaussian_probe((4,), 10)
    exact, sketch = NeuralVelocity(model, probe), NeuralVelocity(model, probe, reference="sketch")
    exact.measure(), sketch.measure()
    for s in range(3):
        _perturb(model, s)
        a, b = exact.measure(), sketch.measure()
        assert (a.model_velocity, a.velocity_change) == (b.model_velocity, b.velocity_change)


def test_sketch_zero_vector_conventions():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
        lin.bias.zero_()
    probe = gaussian_probe((20, 2), 4, seed=0)  # 80 rows per neuron > sketch_dim
    nv = NeuralVelocity(nn.Sequential(lin), probe, reference="sketch", sketch_dim=8)
    nv.measure()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    assert nv.measure().layers["0"].tolist() == [0.0, 1.0, 1.0]


def test_sketch_with_a_chunked_probe_stays_close():
    torch.manual_seed(0)
    model = _conv_model()
    probe = gaussian_probe((2, 8, 8), 30, seed=0)
    exact = NeuralVelocity(model, probe)
    chunked = NeuralVelocity(model, probe, reference="sketch", sketch_dim=128, batch_size=7)
    exact.measure(), chunked.measure()
    for s in range(2):
        _perturb(model, s, scale=0.05)
        assert chunked.measure().model_velocity == pytest.approx(
            exact.measure().model_velocity, rel=0.1
        )


def test_sketch_state_dict_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = _conv_model()
    probe = gaussian_probe((2, 8, 8), 20)
    a = NeuralVelocity(model, probe, reference="sketch", sketch_dim=32, sketch_seed=7)
    a.measure()
    _perturb(model, 1, scale=0.05)
    a.measure()
    torch.save(a.state_dict(), tmp_path / "nv.pt")
    b = NeuralVelocity(model, probe, reference="sketch", sketch_dim=32, sketch_seed=7)
    b.load_state_dict(torch.load(tmp_path / "nv.pt", weights_only=True))
    for s in (2, 3):
        _perturb(model, s, scale=0.05)
        ra, rb = a.measure(), b.measure()
        assert (rb.epoch, rb.model_velocity, rb.velocity_change) == (
            ra.epoch,
            ra.model_velocity,
            ra.velocity_change,
        )
    assert b.nbytes == a.nbytes


def test_sketch_state_dict_must_match_the_settings():
    model = _conv_model()
    probe = gaussian_probe((2, 8, 8), 20)
    src = NeuralVelocity(model, probe, reference="sketch", sketch_dim=32, sketch_seed=1)
    src.measure()
    state = src.state_dict()
    assert (state["reference"], state["sketch_dim"], state["sketch_seed"]) == ("sketch", 32, 1)
    for other in (
        NeuralVelocity(model, probe),
        NeuralVelocity(model, probe, reference="sketch", sketch_dim=32),
        NeuralVelocity(model, probe, reference="sketch", sketch_dim=64, sketch_seed=1),
    ):
        with pytest.raises(ValueError, match="sketch_seed"):
            other.load_state_dict(state)
    exact = NeuralVelocity(model, probe)
    exact.measure()
    with pytest.raises(ValueError, match="reference"):
        src.load_state_dict(exact.state_dict())


def test_sketch_memory_from_a_meta_device_forward():
    with torch.device("meta"):
        model = _conv_model()
    probe = torch.empty(100, 2, 8, 8, device="meta")
    exact = NeuralVelocity(model, probe)
    sketch = NeuralVelocity(model, probe, reference="sketch", sketch_dim=64)
    exact.measure(), sketch.measure()  # shapes only, nothing allocated
    assert exact.nbytes == 2 * 100 * 6 * 64 * 4 + 100 * 4 * 4 + (6 + 6 + 4) * 4
    assert (
        sketch.nbytes < exact.nbytes / 5
    )  # on so small a model the signs (100 x 64 positions) dominate


def test_bad_sketch_arguments():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reference"):
        NeuralVelocity(model, torch.zeros(3, 2), reference="approx")
    with pytest.raises(ValueError, match="sketch_dim"):
        NeuralVelocity(model, torch.zeros(3, 2), reference="sketch", sketch_dim=0)
    with pytest.raises(TypeError, match="sketch_seed"):
        NeuralVelocity(model, torch.zeros(3, 2), reference="sketch", sketch_seed=1.5)
    with pytest.raises(ValueError, match="sketch_above"):
        NeuralVelocity(model, torch.zeros(3, 2), sketch_above=-1)


def test_auto_reference_sketches_only_above_the_memory_threshold():
    torch.manual_seed(0)
    model = _conv_model()
    probe = gaussian_probe((2, 8, 8), 20)
    exact_bytes = 20 * (6 * 64 * 2 + 4) * 4  # conv + bn outputs and the head, float32
    default = NeuralVelocity(model, probe)
    assert default.reference == "auto" and default.exact_reference_bytes() == exact_bytes
    small, big = (
        NeuralVelocity(model, probe, sketch_above=exact_bytes),
        NeuralVelocity(model, probe, sketch_above=exact_bytes - 1),
    )
    exact = NeuralVelocity(model, probe, reference="exact")
    for nv in (default, small, big, exact):
        nv.measure()
    assert (default.reference, small.reference, big.reference) == ("exact", "exact", "sketch")
    _perturb(model, 1, scale=0.05)
    want = exact.measure().model_velocity
    assert default.measure().model_velocity == small.measure().model_velocity == want
    assert big.measure().model_velocity == pytest.approx(want, rel=0.1)
    resumed = NeuralVelocity(model, probe, sketch_above=0)  # would sketch, but takes the saved kind
    resumed.load_state_dict(default.state_dict())
    assert resumed.reference == "exact"
