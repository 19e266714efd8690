"""Device rules of the Julia backend, decided in Python before Julia starts."""

import pytest
import torch
from _julia_helpers import inputs, tight_model

from pycdeq import FixedPoint, Termination
from pycdeq.julia import JuliaModel, TranslationError, UnsupportedDeviceError, _runtime
from pycdeq.julia.devices import GPU_UNSUPPORTED, check_device
from pycdeq.julia.translate import translate


@pytest.fixture
def julia_must_not_start(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("Julia (or its CUDA packages) was asked for before the refusal")

    monkeypatch.setattr(_runtime, "bridge", refuse)
    monkeypatch.setattr(_runtime, "ensure_cuda", refuse)


def test_anderson_on_cuda_is_refused_before_julia_starts(julia_must_not_start):
    with pytest.raises(UnsupportedDeviceError, match=r"'anderson' \(NLsolveJL\(:anderson\)\) cannot run on cuda"):
        JuliaModel.from_torch(tight_model("vanilla", False), device="cuda")


def test_moving_an_anderson_session_to_cuda_is_refused_and_it_stays_on_the_cpu(fake_bridge, monkeypatch):
    julia_model = JuliaModel.from_torch(tight_model("skip", False), bridge=fake_bridge)
    monkeypatch.setattr(_runtime, "ensure_cuda", lambda: pytest.fail("ensure_cuda was called"))
    with pytest.raises(UnsupportedDeviceError, match="QR factors"):
        julia_model.to("cuda:0")
    assert julia_model.device == torch.device("cpu")
    assert julia_model(inputs()).logits.device.type == "cpu"


def test_the_refusal_names_what_to_use_instead():
    with pytest.raises(UnsupportedDeviceError) as raised:
        check_device(translate(tight_model("vanilla", False)), "cuda")
    assert "Broyden" in str(raised.value) and "CPU" in str(raised.value)
    assert isinstance(raised.value, TranslationError) and isinstance(raised.value, ValueError)


@pytest.mark.parametrize("variant, continuous, solver", [
    ("vanilla", False, "broyden"), ("skip_reg", True, None), ("node", True, None), ("vanilla", False, "picard")])
def test_solvers_without_host_state_may_run_on_cuda(variant, continuous, solver):
    model = tight_model(variant, continuous, discrete_solver=solver or "anderson")
    if solver == "picard":
        model.deq.solver = FixedPoint(termination=Termination(mode="abs", abstol=1e-6))
    spec = translate(model)
    assert spec.solver.name not in GPU_UNSUPPORTED
    assert check_device(spec, "cuda") == torch.device("cuda")  # a rule, not a CUDA call


def test_anderson_still_runs_on_the_cpu():
    assert check_device(translate(tight_model("vanilla", False)), "cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["meta", "cuda:x", 3.5])
def test_devices_the_backend_has_no_path_to_are_refused(device):
    with pytest.raises(ValueError, match="cpu|cuda"):
        check_device(translate(tight_model("vanilla", False, discrete_solver="broyden")), device)


def test_check_device_needs_a_spec():
    with pytest.raises(TypeError, match="ModelSpec"):
        check_device(tight_model("vanilla", False), "cpu")
