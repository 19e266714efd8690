"""Parity with DeepEquilibriumNetworks.jl and training in Julia. Needs a working Julia.

Run with ``pytest -m julia tests/julia``. Where Julia is absent (this repository's CI) every
test here is skipped with ``pycdeq.julia.status()`` as the reason. The first run installs
and precompiles the Julia packages (minutes); allow for it with a generous timeout.

Tolerances (float32, documented in docs/julia.md and ``pycdeq.julia.compare``): z* and the
logits to 1e-4 relative, parameter gradients to 1e-3 relative, with both engines solving
far below those levels (``_julia_helpers.tight_model``).

nfe (``pycdeq.julia.compare.expected_nfe``): equal to the depth on both sides when the DEQ is
unrolled (``fixed_depth``); otherwise reported, not compared: Julia stops the whole batch at
once, and its Anderson / L-Broyden iterate on the whole batch as one vector, so iterates and
nfe differ while z* agrees (``ParityReport.approximations`` lists why).
"""

import os
import subprocess
import sys
import textwrap

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
    assert report.nfe_expected is None and report.nfe_julia != 0  # reported, not compared
    assert report.passed, report.summary()


def test_broyden_solves_to_the_same_fixed_point(bridge):
    from pycdeq.julia import JuliaModel, compare

    m = tight_model("vanilla", False, discrete_solver="broyden")
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=bridge))
    assert report.z_star_rel <= 1e-4 and report.logits_rel <= 1e-4, report.summary()
    assert any("batch-coupled" in note for note in report.approximations)


@pytest.mark.parametrize("variant, continuous", [("vanilla", False), ("skip", True), ("skip_reg", False)])
def test_fixed_depth_unrolls_f_on_the_running_state(variant, continuous, bridge):
    """The bridge unrolls z <- f(z, x) itself; DEQ.jl's own mode would return f(z0, x)."""
    from pycdeq.julia import JuliaModel, compare
    from pycdeq.julia.compare import difference

    m = tight_model(variant, continuous)
    m.deq.fixed_depth = 3
    with torch.no_grad():  # depth 1 and depth 3 differ far beyond the tolerance
        h = m.stem(inputs())
        z0 = m.deq.initial_state(h)
        z1 = m.deq.f(z0, h)
        z3 = m.deq.f(m.deq.f(z1, h), h)
    assert difference(z3, z1)[1] > 100 * 1e-4
    report = compare(m, inputs(), julia_model=JuliaModel.from_torch(m, bridge=bridge))
    assert report.nfe_expected == 3 and report.nfe_torch == report.nfe_julia == 3
    assert report.passed, report.summary()


def test_adjoint_iteration_cap_applies_to_small_states(bridge):
    """3 samples x 16 = 48 state entries: at most 50, SciMLSensitivity would solve exactly with
    `linsolve = nothing`. The explicit GMRES keeps the cap: one iteration is not converged."""
    from pycdeq import GMRES
    from pycdeq.julia import JuliaModel
    from pycdeq.julia.compare import difference

    x = inputs(batch=3)
    cotangent = torch.randn(3, CLASSES, generator=torch.Generator().manual_seed(4))
    gradients = {}
    for max_iter in (1, 200):
        m = tight_model("vanilla", False)
        m.deq.adjoint = GMRES(rtol=1e-8, atol=1e-12, max_iter=max_iter, restart=min(max_iter, 20))
        _, gradients[max_iter] = JuliaModel.from_torch(m, bridge=bridge).gradients(x, cotangent)
    name = "deq.f.Wz.weight"
    assert difference(gradients[200][name], gradients[1][name])[1] > 1e-3


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


GPU_PROBE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from _julia_helpers import inputs, tight_model
    from pycdeq.julia import JuliaModel
    m = tight_model("vanilla", False, discrete_solver="broyden")
    gpu = JuliaModel.from_torch(m, device="cuda")  # first use: CUDA.jl is declared before start
    cpu = JuliaModel.from_torch(m)
    x = inputs()
    diff = (gpu(x.cuda()).logits.cpu() - cpu(x).logits).abs().max() / cpu(x).logits.abs().max()
    print("REL", float(diff))
""")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_session_matches_the_cpu_one():
    """In a fresh process: the GPU must be asked for before Julia starts (docs/julia.md)."""
    result = subprocess.run([sys.executable, "-c", GPU_PROBE, os.path.dirname(__file__)],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    relative = float(next(line for line in result.stdout.splitlines() if line.startswith("REL")).split()[1])
    assert relative <= 1e-4
