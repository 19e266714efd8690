"""The GPU packages of the Julia backend: declared before Julia starts, never resolved after.

juliapkg's ``resolve()`` deletes the environment's Manifest and reinstalls into it, so it must
not run under a live Julia. These tests replace juliapkg and the Julia start by recorders.
"""

import sys
import types

import pytest

from pycdeq.julia import _runtime
from pycdeq.julia.errors import JuliaNotAvailableError


class FakeMain:
    """``juliacall.Main``: answers the few ``seval`` calls ``ensure_cuda`` makes."""

    def __init__(self, events, *, installed=True, functional=True):
        self.events, self.installed, self.functional = events, installed, functional

    def seval(self, code):
        self.events.append(("seval", code))
        if code.startswith("Base.find_package"):
            return not self.installed
        if code == "LuxCUDA.functional()":
            return self.functional
        return None


@pytest.fixture
def recorder(monkeypatch, clean_runtime):
    events = []
    juliapkg = types.ModuleType("juliapkg")
    juliapkg.add = lambda name, uuid, version=None: events.append(("add", name, uuid, version))
    juliapkg.resolve = lambda *a, **k: events.append(("resolve",))
    monkeypatch.setitem(sys.modules, "juliapkg", juliapkg)
    state = types.SimpleNamespace(events=events, main=FakeMain(events))

    def start():
        events.append(("start",))
        _runtime._STATE["main"] = state.main
        return object()

    monkeypatch.setattr(_runtime, "_check_startable", lambda: None)
    monkeypatch.setattr(_runtime, "_start", start)
    return state


def test_gpu_as_first_use_declares_the_packages_before_julia_starts(recorder):
    _runtime.ensure_cuda()
    kinds = [e[0] for e in recorder.events]
    assert kinds[:3] == ["add", "add", "start"] and "resolve" not in kinds
    declared = {e[1]: (e[2], e[3]) for e in recorder.events if e[0] == "add"}
    assert declared == _runtime.CUDA_PACKAGES
    assert ("seval", "import LuxCUDA") in recorder.events
    _runtime.ensure_cuda()  # once is enough
    assert kinds == [e[0] for e in recorder.events]


def test_gpu_after_a_cpu_start_never_declares_or_resolves(recorder):
    _runtime.bridge()
    recorder.main.installed = False
    with pytest.raises(JuliaNotAvailableError, match="before Julia starts"):
        _runtime.ensure_cuda()
    assert [e[0] for e in recorder.events if e[0] in ("add", "resolve")] == []
    assert ("seval", "import LuxCUDA") not in recorder.events


def test_gpu_after_a_cpu_start_loads_packages_an_earlier_run_installed(recorder):
    _runtime.bridge()
    _runtime.ensure_cuda()
    assert [e[0] for e in recorder.events] == ["start", "seval", "seval", "seval"]
    assert _runtime._STATE["cuda"] is True


def test_a_machine_without_a_working_gpu_is_reported(recorder):
    recorder.main.functional = False
    with pytest.raises(JuliaNotAvailableError, match="functional"):
        _runtime.ensure_cuda()
    assert _runtime._STATE["cuda"] is False


def test_nothing_is_declared_when_julia_cannot_start(recorder, monkeypatch):
    def cannot_start():
        raise JuliaNotAvailableError("no Julia found")

    monkeypatch.setattr(_runtime, "_check_startable", cannot_start)
    with pytest.raises(JuliaNotAvailableError, match="no Julia found") as raised:
        _runtime.ensure_cuda()
    assert recorder.events == []
    assert _runtime.failure() is raised.value  # cached like any failed start


def test_cuda_bound_is_luxcudas_own():
    # LuxCUDA 0.3.6 (LuxDL/Lux.jl lib/LuxCUDA/Project.toml) declares CUDA = "5.8, 6".
    assert _runtime.CUDA_PACKAGES["CUDA"][1] == "5.8, 6"
    assert _runtime.CUDA_PACKAGES["LuxCUDA"][1] == "0.3"
