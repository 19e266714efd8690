"""JuliaModel and compare() end to end against a Python stand-in of PycdeqBridge.

The stand-in (``_julia_fake_bridge``) follows Julia's conventions (column-major, batch-last,
its own parameter order) and computes the model independently, in float64. Agreement with
the torch model therefore checks every conversion on the Python side of the boundary; the
Julia side itself is covered by ``test_julia_parity.py`` where Julia exists.
"""

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
