"""Detection and start-up without Julia: no juliacall import, an immediate clear error, a reason."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pycdeq.julia import _detect
from pycdeq.julia.errors import JuliaNotAvailableError

# One subprocess answers several questions (each costs a fresh `import torch`). The
# environment hides any Julia this machine might have, so the outcome is deterministic.
# Instead of timing the refusal, the probe records what would make it slow: every process
# spawned (subprocess.Popen, which subprocess.run and juliapkg use) and every socket
# connection, from the first look at the backend on.
PROBE = textwrap.dedent("""
    import json, socket, subprocess, sys
    import pycdeq
    facts = {"after_import_pycdeq": sorted(m for m in sys.modules
                                           if m == "juliacall" or m.startswith("pycdeq.julia"))}
    spawned, connected = [], []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *rest, **options):
            spawned.append(str(args))
            super().__init__(args, *rest, **options)

    real_connect = socket.socket.connect

    def recording_connect(self, address):
        connected.append(str(address))
        return real_connect(self, address)

    subprocess.Popen = RecordingPopen
    socket.socket.connect = recording_connect
    import pycdeq.julia as pj
    facts["available"] = pj.available()
    facts["status_before"] = pj.status()
    messages = []
    for _ in range(2):
        try:
            pj.start()
        except pj.JuliaNotAvailableError as error:
            messages.append(str(error))
    facts.update(messages=messages, status_after=pj.status(), spawned=spawned, connected=connected,
                 juliacall_imported="juliacall" in sys.modules,
                 juliapkg_imported="juliapkg" in sys.modules)
    print("FACTS" + json.dumps(facts))
""")


@pytest.fixture(scope="module")
def offline_probe(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON_JULIA", "JULIA"))}
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/bin" + os.pathsep + "/bin",
               HOME=str(home), PYTHON_JULIAPKG_OFFLINE="yes",
               PYTHON_JULIAPKG_PROJECT=str(home / "julia_env"), JULIAUP_DEPOT_PATH=str(home / "jup"))
    env.pop("PYCDEQ_JULIA_AUTO_INSTALL", None)
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                            timeout=300, cwd=str(home))
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(out for out in result.stdout.splitlines() if out.startswith("FACTS"))
    return json.loads(line[len("FACTS"):])


def test_import_pycdeq_loads_neither_juliacall_nor_the_julia_backend(offline_probe):
    assert offline_probe["after_import_pycdeq"] == []


def test_offline_request_for_backend_fails_without_spawning_connecting_or_importing(offline_probe):
    """Why the refusal is immediate, shown without a clock: no Julia process, no network, no
    juliacall (whose import would hand over to juliapkg's resolver)."""
    assert len(offline_probe["messages"]) == 2
    assert offline_probe["spawned"] == [] and offline_probe["connected"] == []
    assert not offline_probe["juliacall_imported"] and not offline_probe["juliapkg_imported"]


def test_offline_error_says_how_to_fix(offline_probe):
    message = offline_probe["messages"][0]
    assert "Julia >= 1.10" in message and "PATH" in message and "PYTHON_JULIAPKG_EXE" in message
    assert offline_probe["messages"][1] == message  # the failure is cached, not retried


def test_status_says_why_the_backend_is_unavailable(offline_probe):
    assert offline_probe["available"] is False
    before = offline_probe["status_before"]
    assert before.startswith("Julia backend not available")
    assert "no Julia found" in before and "PYTHON_JULIAPKG_OFFLINE=yes" in before
    assert "failed to start" in offline_probe["status_after"]


# --- detection in-process (fake executables) --------------------------------------------


def _fake_julia(directory, version="1.10.4"):
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "julia"
    exe.write_text(f"#!/bin/sh\necho 'julia version {version}'\n")
    exe.chmod(0o755)
    return exe


@pytest.fixture
def isolated(monkeypatch, tmp_path, clean_runtime):
    for name in list(os.environ):
        if name.startswith(("PYTHON_JULIA", "JULIA", "PYCDEQ_JULIA")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JULIAUP_DEPOT_PATH", str(tmp_path / "juliaup_depot"))
    monkeypatch.setenv("PYTHON_JULIAPKG_PROJECT", str(tmp_path / "env"))
    monkeypatch.setenv("PATH", "/usr/bin" + os.pathsep + "/bin")
    return tmp_path


def test_julia_on_path_is_found_with_its_version(isolated, monkeypatch):
    exe = _fake_julia(isolated / "bin", "1.10.4")
    monkeypatch.setenv("PATH", str(exe.parent) + os.pathsep + os.environ["PATH"])
    found = _detect.detect(refresh=True)
    assert found.julia_found and found.executable == str(exe)
    assert found.version == (1, 10, 4) and found.source == "PATH"


def test_julia_older_than_1_10_3_is_reported_not_used(isolated, monkeypatch):
    exe = _fake_julia(isolated / "bin", "1.10.2")
    monkeypatch.setenv("PATH", str(exe.parent) + os.pathsep + os.environ["PATH"])
    found = _detect.detect(refresh=True)
    assert not found.julia_found
    assert "too old" in found.problem and "1.10.2" in found.problem


def test_broken_PYTHON_JULIAPKG_EXE_is_named_in_the_reason(isolated, monkeypatch):
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(isolated / "no" / "julia"))
    found = _detect.detect(refresh=True)
    assert not found.julia_found and "PYTHON_JULIAPKG_EXE" in found.problem
    assert "PYTHON_JULIAPKG_EXE" in _detect.explain(found)


def test_PYTHON_JULIAPKG_EXE_wins_over_PATH(isolated, monkeypatch):
    on_path = _fake_julia(isolated / "bin", "1.11.1")
    chosen = _fake_julia(isolated / "other", "1.10.5")
    monkeypatch.setenv("PATH", str(on_path.parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(chosen))
    found = _detect.detect(refresh=True)
    assert found.executable == str(chosen) and found.version == (1, 10, 5)


def test_juliaup_installation_is_found(isolated):
    depot = isolated / "juliaup_depot"
    _fake_julia(depot / "juliaup" / "julia-1.11.2+0.x64.linux.gnu" / "bin", "1.11.2")
    (depot / "juliaup" / "juliaup.json").write_text(json.dumps(
        {"InstalledVersions": {"1.11.2+0.x64.linux.gnu": {"Path": "julia-1.11.2+0.x64.linux.gnu"}}}))
    found = _detect.detect(refresh=True)
    assert found.julia_found and found.source == "juliaup" and found.version == (1, 11, 2)


def test_missing_julia_raises_before_importing_juliacall(isolated, monkeypatch):
    monkeypatch.setattr(_detect, "juliacall_installed", lambda: True)
    was_imported = "juliacall" in sys.modules
    from pycdeq.julia import _runtime

    with pytest.raises(JuliaNotAvailableError, match="no Julia found"):
        _runtime.bridge()
    assert ("juliacall" in sys.modules) == was_imported


def test_missing_juliacall_is_reported(isolated, monkeypatch):
    monkeypatch.setattr(_detect, "juliacall_installed", lambda: False)
    found = _detect.detect(refresh=True)
    assert "pip install 'pycdeq[julia]'" in _detect.explain(found)
    from pycdeq.julia import _runtime

    with pytest.raises(JuliaNotAvailableError, match="juliacall is not installed"):
        _runtime.bridge()


def test_failed_start_is_cached_and_reported_by_available_and_status(isolated, monkeypatch):
    from pycdeq import julia
    from pycdeq.julia import _runtime

    monkeypatch.setattr(_detect, "juliacall_installed", lambda: True)
    with pytest.raises(JuliaNotAvailableError) as first:
        julia.start()
    with pytest.raises(JuliaNotAvailableError) as second:
        julia.start()
    assert first.value is second.value
    assert julia.available() is False and "failed to start" in julia.status()
    assert _runtime.failure() is first.value


@pytest.mark.parametrize("text, expected", [
    ("julia version 1.10.4\n", (1, 10, 4)), ("julia version 1.11.0-rc2", (1, 11, 0)),
    ("Julia Version 1.9.3", (1, 9, 3)), ("python 3.11", None), ("", None), ("julia version x", None)])
def test_version_strings_parse(text, expected):
    assert _detect.parse_version(text) == expected


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_download_timeout_must_be_a_positive_number(monkeypatch, value):
    from pycdeq.julia import _runtime

    monkeypatch.setenv(_runtime.TIMEOUT_VARIABLE, value)
    with pytest.raises(ValueError, match=_runtime.TIMEOUT_VARIABLE):
        _runtime.download_timeout()
