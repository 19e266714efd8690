"""JuliaModel and compare() end to end against a Python stand-in of PycdeqBridge.

The stand-in (``_julia_fake_bridge``) follows Julia's conventions (column-major, batch-last,
its own parameter order) and computes the model independently, in float64. Agreement with
the torch model therefore checks every conversion on the Python side of the boundary; the
Julia side itself is covered by ``test_julia_parity.py`` where Julia exists.
"""

import dataclasses

import numpy as np
import pytest
import torch
from _julia_helpers import CLASSES, IN_FEATURES, WIDTH, inputs, tight_model

from pycdeq.julia import JuliaModel, compare
from pycdeq.julia.compare import difference

VARIANTS = [("vanilla", True), ("vanilla", False), ("skip", True), ("skip", False),
            ("skip_reg", True), ("skip_reg", False), ("node", True)]


@pytest.mark.parametrize("variant, continuous", VARIANTS)
def test_compare_reports_parity_for_every_variant(variant, continuous, fake_bridge):
    m = tight_model(variant, continuous)
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=fake_bridge))
    assert report.passed, report.summary()
    assert report.z_star_rel < 1e-4 and report.logits_rel < 1e-4 and report.worst_gradient_rel < 1e-3
    assert set(report.gradient_rel) == {n for n, _ in m.named_parameters()}
    assert report.nfe_torch > 0 and report.nfe_julia > 0


def test_compare_fails_when_a_layout_is_wrong(fake_bridge, monkeypatch):
    """The harness can fail: flattening row-major instead of column-major is caught."""
    m = tight_model("vanilla", False)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    from pycdeq.julia import params

    monkeypatch.setattr(params, "julia_memory", lambda a: np.asarray(a).ravel(order="C"))
    report = compare(m, inputs(), julia_model=julia_model)
    assert not report.passed and report.logits_rel > 1e-2


def test_forward_returns_torch_layout_tensors(fake_bridge):
    m = tight_model("skip_reg", False)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    x = inputs(batch=7)
    out = julia_model(x)
    assert out.logits.shape == (7, CLASSES) and out.z_star.shape == (7, WIDTH)
    assert out.residual.shape == (7,) and float(out.residual.max()) < 1e-5
    with torch.no_grad():
        h = m.stem(x)
        z0 = m.deq.f(torch.zeros_like(h), h)  # Skip Reg.: z0 = f(0, x)
        logits, _ = m(x)
    assert difference(z0, out.z0)[1] < 1e-5
    assert difference(logits, out.logits)[1] < 1e-4
    assert torch.equal(julia_model.predict(x), logits.argmax(dim=1))


def test_images_are_flattened_like_the_torch_model(fake_bridge):
    m = tight_model("vanilla", False)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    images = inputs(batch=3).reshape(3, 1, 3, 4)
    with torch.no_grad():
        logits, _ = m(images)
    assert difference(logits, julia_model(images).logits)[1] < 1e-4


def test_weights_round_trip_bit_exactly(fake_bridge):
    m = tight_model("skip", True)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    state = julia_model.state_dict()
    for name, value in m.named_parameters():
        assert torch.equal(state[name], value.detach()), name
    target = tight_model("skip", True, seed=5)
    julia_model.copy_to(target)
    for (name, a), (_, b) in zip(m.named_parameters(), target.named_parameters()):
        assert torch.equal(a, b), name


def test_fit_in_julia_lowers_the_loss_and_weights_come_back(fake_bridge):
    m = tight_model("skip", False)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(40, IN_FEATURES, generator=generator)
    y = (x[:, :CLASSES].argmax(dim=1))
    losses = julia_model.fit(x, y, epochs=4, batch_size=8, learning_rate=0.2)
    assert len(losses) == 4 and losses[-1] < losses[0]
    before = m.head.weight.detach().clone()
    julia_model.copy_to(m)
    assert not torch.equal(before, m.head.weight)
    assert julia_model.train_step(x[:8], y[:8], learning_rate=0.1) > 0


def test_save_and_load_keep_spec_and_weights(fake_bridge, tmp_path):
    m = tight_model("vanilla", True)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    path = tmp_path / "model.jls"
    julia_model.save(path)
    loaded = JuliaModel.load(path, bridge=fake_bridge)
    assert loaded.spec == julia_model.spec
    assert np.array_equal(loaded.get_params(), julia_model.get_params())


def test_bad_inputs_are_rejected_before_reaching_julia(fake_bridge):
    julia_model = JuliaModel.from_torch(tight_model("vanilla", False), bridge=fake_bridge)
    with pytest.raises(ValueError, match="features"):
        julia_model(torch.rand(2, IN_FEATURES + 1))
    with pytest.raises(TypeError, match=r"\.float\(\)"):
        julia_model(inputs().double())
    with pytest.raises(ValueError, match="batch"):
        julia_model(torch.rand(IN_FEATURES))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        julia_model.train_step(inputs(batch=2), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="cotangent"):
        julia_model.gradients(inputs(batch=2), torch.zeros(3, CLASSES))
    with pytest.raises(ValueError, match="epochs"):
        julia_model.fit(inputs(batch=2), torch.tensor([0, 1]), epochs=0)
    with pytest.raises(ValueError, match="parameters"):
        julia_model.set_params(np.zeros(3))
    with pytest.raises(ValueError, match="cpu or cuda"):
        julia_model.to("meta")


UNROLLED = [("vanilla", False), ("skip", True), ("skip_reg", False)]


@pytest.mark.parametrize("variant, continuous", UNROLLED)
def test_fixed_depth_unrolls_f_on_the_running_state_with_equal_nfe(variant, continuous, fake_bridge):
    m = tight_model(variant, continuous)
    m.deq.fixed_depth = 3
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=fake_bridge))
    assert report.nfe_expected == 3 and report.nfe_torch == report.nfe_julia == 3
    assert report.passed, report.summary()


def test_compare_catches_the_reference_unrolled_mode():
    """DEQ.jl's own pretraining mode (RepeatedLayer without input injection) returns f(z0, x)
    for every depth; the harness must tell it from pycdeq's unrolling."""
    from _julia_fake_bridge import FakeBridge

    m = tight_model("vanilla", False)
    m.deq.fixed_depth = 3
    with torch.no_grad():  # precondition: depth 1 and depth 3 differ far beyond the tolerance
        h = m.stem(inputs())
        z1 = m.deq.f(torch.zeros_like(h), h)
        z3 = m.deq.f(m.deq.f(z1, h), h)
    assert difference(z3, z1)[1] > 100 * 1e-4
    reference_like = FakeBridge(repeat_same_input=True)
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=reference_like))
    assert report.nfe_torch == report.nfe_julia == 3  # the nfe alone would not show it
    assert not report.passed and report.z_star_rel > 1e-3


def test_solved_nfe_is_reported_not_compared_and_approximations_travel(fake_bridge):
    m = tight_model("vanilla", False, discrete_solver="broyden")
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    report = compare(m, inputs(), julia_model=julia_model)
    assert report.nfe_expected is None and report.nfe_as_expected
    assert report.approximations == julia_model.spec.approximations
    assert any("batch-coupled" in note for note in report.approximations)
    assert "not compared" in report.summary() and "L-Broyden is batch-coupled" in report.summary()
    assert tuple(report.to_dict()["approximations"]) == report.approximations


def test_an_nfe_other_than_the_fixed_depth_fails_the_report(fake_bridge):
    m = tight_model("skip_reg", False)
    m.deq.fixed_depth = 2
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=fake_bridge))
    broken = dataclasses.replace(report, nfe_julia=1)
    assert report.passed and not broken.nfe_as_expected and not broken.passed
    assert "both must be 2" in broken.summary()


def test_a_session_built_for_other_settings_is_refused(fake_bridge):
    m = tight_model("vanilla", False)
    julia_model = JuliaModel.from_torch(m, bridge=fake_bridge)
    m.deq.fixed_depth = 2  # torch would unroll while the session solves
    with pytest.raises(ValueError, match="fixed_depth"):
        compare(m, inputs(), julia_model=julia_model)
