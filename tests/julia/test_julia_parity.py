"""Parity with DeepEquilibriumNetworks.jl and training in Julia. Needs a working Julia.

Run with ``pytest -m julia tests/julia``. Where Julia is absent (this repository's CI) every
test here is skipped with ``pycdeq.julia.status()`` as the reason. The first run installs
and precompiles the Julia packages (minutes); allow for it with a generous timeout.

Tolerances (float32, documented in docs/julia.md and ``pycdeq.julia.compare``): z* and the
logits to 1e-4 relative, parameter gradients to 1e-3 relative, with both engines solving
far below those levels (``_julia_helpers.tight_model``).
"""

import numpy as np
import pytest
import torch
from _julia_helpers import CLASSES, IN_FEATURES, inputs, tight_model

from pycdeq.julia import available, status

pytestmark = [pytest.mark.julia, pytest.mark.skipif(not available(), reason=status())]

VARIANTS = [("vanilla", True), ("vanilla", False), ("skip", True), ("skip", False),
            ("skip_reg", True), ("skip_reg", False), ("node", True)]


@pytest.fixture(scope="module")
def bridge():
    from pycdeq.julia import start

    return start()


@pytest.mark.parametrize("variant, continuous", VARIANTS)
def test_z_star_logits_and_gradients_match_deqjl(variant, continuous, bridge):
    from pycdeq.julia import JuliaModel, compare

    m = tight_model(variant, continuous)
    julia_model = JuliaModel.from_torch(m, bridge=bridge)
    report = compare(m, inputs(), julia_model=julia_model)
    assert report.z_star_rel <= 1e-4, report.summary()
    assert report.logits_rel <= 1e-4, report.summary()
    assert report.worst_gradient_rel <= 1e-3, report.summary()
    assert report.nfe_julia != 0


def test_broyden_solves_to_the_same_fixed_point(bridge):
    from pycdeq.julia import JuliaModel, compare

    m = tight_model("vanilla", False, discrete_solver="broyden")
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=bridge))
    assert report.z_star_rel <= 1e-4 and report.logits_rel <= 1e-4, report.summary()


def test_weights_cross_into_julia_and_back_unchanged(bridge):
    from pycdeq.julia import JuliaModel

    m = tight_model("skip", True)
    state = JuliaModel.from_torch(m, bridge=bridge).state_dict()
    for name, value in m.named_parameters():
        assert torch.equal(state[name], value.detach()), name


@pytest.mark.parametrize("variant", ["vanilla", "skip_reg", "skip"])
def test_short_training_run_in_julia_lowers_the_loss(variant, bridge):
    from pycdeq.julia import JuliaModel

    m = tight_model(variant, False)
    julia_model = JuliaModel.from_torch(m, bridge=bridge)
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(64, IN_FEATURES, generator=generator)
    y = x[:, :CLASSES].argmax(dim=1)
    losses = julia_model.fit(x, y, epochs=6, batch_size=16, learning_rate=1e-2)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    julia_model.copy_to(m)  # the trained weights are usable by the torch model
    with torch.no_grad():
        logits, _ = m(x)
    assert (logits.argmax(dim=1) == julia_model.predict(x)).float().mean() > 0.9


def test_save_and_load_round_trip(bridge, tmp_path):
    from pycdeq.julia import JuliaModel

    julia_model = JuliaModel.from_torch(tight_model("vanilla", False), bridge=bridge)
    path = tmp_path / "model.jls"
    julia_model.save(path)
    loaded = JuliaModel.load(path, bridge=bridge)
    assert np.array_equal(loaded.get_params(), julia_model.get_params())
    assert torch.allclose(loaded(inputs()).logits, julia_model(inputs()).logits)
