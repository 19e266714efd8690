"""juliapkg.json and the PycdeqBridge package: well-formed, consistent, shipped in the wheel."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

import pycdeq

PACKAGE_DIR = os.path.dirname(pycdeq.__file__)
JULIAPKG_JSON = os.path.join(PACKAGE_DIR, "juliapkg.json")
REPO = os.path.dirname(PACKAGE_DIR)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
REQUIRED = {"DeepEquilibriumNetworks", "Lux", "LuxCore", "NonlinearSolve", "SteadyStateDiffEq",
            "OrdinaryDiffEq", "SciMLSensitivity", "Zygote", "Optimisers", "DLPack", "PycdeqBridge"}
# Julia's standard libraries: deps of the glue package that juliapkg.json need not list.
STDLIB_UUIDS = {"Random": "9a3f8284-a2c9-5f02-9a11-845980a1fd5c",
                "Serialization": "9e88b42a-f829-5b0c-bbe9-9e923198166b",
                "Statistics": "10745b16-79ce-11e8-11f9-7d13ad32a3b2"}


def _declaration():
    with open(JULIAPKG_JSON) as file:
        return json.load(file)


def _bridge_project(declaration):
    path = os.path.join(PACKAGE_DIR, declaration["packages"]["PycdeqBridge"]["path"], "Project.toml")
    with open(path, "rb") as file:
        return tomllib.load(file)


def test_juliapkg_json_declares_every_package_with_uuid_and_compat():
    declaration = _declaration()
    assert declaration["julia"] == "1.10"
    packages = declaration["packages"]
    assert REQUIRED <= set(packages)
    for name, entry in packages.items():
        assert UUID.match(entry["uuid"]), name
        assert not name.endswith(".jl")
        if name != "PycdeqBridge":
            assert re.match(r"^\d+(\.\d+)*(, \d+(\.\d+)*)*$", entry["version"]), (name, entry)
    assert len({e["uuid"] for e in packages.values()}) == len(packages)
    # GPU packages are added on first GPU use, never in the base set.
    assert not {"CUDA", "LuxCUDA"} & set(packages)


def test_bridge_is_a_dev_path_dependency_inside_the_python_package():
    entry = _declaration()["packages"]["PycdeqBridge"]
    assert entry["dev"] is True and not os.path.isabs(entry["path"])
    project = _bridge_project(_declaration())
    assert project["name"] == "PycdeqBridge" and project["uuid"] == entry["uuid"]
    assert os.path.isfile(os.path.join(PACKAGE_DIR, entry["path"], "src", "PycdeqBridge.jl"))


def test_bridge_dependencies_agree_with_juliapkg_json():
    packages = _declaration()["packages"]
    project = _bridge_project(_declaration())
    for name, uuid in project["deps"].items():
        expected = packages[name]["uuid"] if name in packages else STDLIB_UUIDS.get(name)
        assert expected == uuid, f"{name}: {uuid} vs {expected}"
        assert name in project["compat"], f"no compat bound for {name}"
        if name in packages:
            assert project["compat"][name] == packages[name]["version"], name
    assert project["compat"]["julia"] == "1.10"


def test_top_level_julia_folder_points_to_the_shipped_sources():
    readme = os.path.join(REPO, "julia", "README.md")
    if not os.path.isfile(readme):
        pytest.skip("not a source checkout")
    with open(readme) as file:
        assert "pycdeq/julia/PycdeqBridge" in file.read()


def test_juliapkg_finds_the_declaration_and_the_bridge():
    juliapkg_deps = pytest.importorskip("juliapkg.deps")
    compat, packages = juliapkg_deps.find_requirements()
    by_name = {p.name: p for p in packages}
    assert REQUIRED <= set(by_name)
    bridge = by_name["PycdeqBridge"]
    assert bridge.dev and os.path.isfile(os.path.join(bridge.path, "Project.toml"))
    assert compat is not None


def test_wheel_ships_juliapkg_json_and_the_bridge_sources(tmp_path):
    if importlib.util.find_spec("build") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("the `build` and `setuptools` packages are needed to build the wheel")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    shutil.copytree(PACKAGE_DIR, source / "pycdeq",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check",
         "--outdir", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        shipped = json.loads(archive.read("pycdeq/juliapkg.json"))
        archive.extractall(tmp_path / "site")
    assert shipped == _declaration()
    bridge = "pycdeq/" + shipped["packages"]["PycdeqBridge"]["path"]
    for part in ("Project.toml", "src/PycdeqBridge.jl", "src/models.jl", "src/solvers.jl",
                 "src/training.jl", "src/interop.jl"):
        assert f"{bridge}/{part}" in names, part
    assert "pycdeq/py.typed" in names  # PEP 561: type checkers read pycdeq's inline types
    if importlib.util.find_spec("juliapkg") is not None:
        # juliapkg scans `<sys.path entry>/<package>/juliapkg.json`: the installed copy is found.
        probe = ("import juliapkg.deps, json; print(json.dumps(juliapkg.deps.deps_files()))")
        env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
        found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                               cwd=tmp_path, timeout=120)
        assert found.returncode == 0, found.stderr[-2000:]
        expected = os.path.normcase(str(tmp_path / "site" / "pycdeq" / "juliapkg.json"))
        assert expected in json.loads(found.stdout.splitlines()[-1])
