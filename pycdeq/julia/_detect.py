"""Find a usable Julia without side effects: no juliacall import, no network, no files written.

juliacall delegates the search to juliapkg, which downloads Julia when it finds none (with
no timeout: a stalled network hangs the import) or fails with a bare ``Exception``. This
module repeats juliapkg's search order with nothing but ``julia --version`` calls (under a
timeout), so that ``available()`` / ``status()`` can answer in well under a second:

1. ``PYTHON_JULIACALL_EXE`` together with ``PYTHON_JULIACALL_PROJECT`` (juliacall then skips
   juliapkg entirely);
2. ``PYTHON_JULIAPKG_EXE`` (juliapkg uses it or fails; nothing else is tried);
3. a Julia that juliapkg installed earlier, in ``{project}/pyjuliapkg/install``;
4. a juliaup installation (its ``juliaup.json``);
5. ``julia`` on ``PATH``.

A Julia older than 1.10.3 is reported, not used: juliacall needs ``^1.10.3`` (1.10.0-1.10.2
crash it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .errors import FIX_JULIA, FIX_JULIACALL

MIN_VERSION = (1, 10, 3)
VERSION_TIMEOUT_S = 10.0
AUTO_INSTALL_VARIABLE = "PYCDEQ_JULIA_AUTO_INSTALL"

Version = Tuple[int, int, int]


@dataclass(frozen=True)
class Detection:
    """What the search found. ``problem`` is ``None`` exactly when a usable Julia was found."""

    executable: Optional[str]
    version: Optional[Version]
    source: str
    problem: Optional[str]
    juliacall: bool
    offline: bool
    auto_install: bool
    searched: Tuple[str, ...]
    notes: Tuple[str, ...] = ()

    @property
    def julia_found(self) -> bool:
        return self.executable is not None and self.problem is None

    @property
    def usable(self) -> bool:
        """A compatible Julia and juliacall are both present (the packages may still need
        their one-time install and precompilation on first start)."""
        return self.julia_found and self.juliacall


def _flag(name: str, x_option: str) -> bool:
    value = sys._xoptions.get(x_option)
    if value is None:
        value = os.environ.get(name, "")
    return str(value).strip().lower() == "yes"


def offline() -> bool:
    """juliapkg's offline switch (``PYTHON_JULIAPKG_OFFLINE=yes`` or ``-X juliapkg-offline=yes``)."""
    return _flag("PYTHON_JULIAPKG_OFFLINE", "juliapkg-offline")


def auto_install() -> bool:
    """``PYCDEQ_JULIA_AUTO_INSTALL=yes`` lets juliapkg download Julia when none is found."""
    return _flag(AUTO_INSTALL_VARIABLE, "pycdeq-julia-auto-install")


def juliacall_installed() -> bool:
    # find_spec on a top-level name locates the package without executing it.
    return importlib.util.find_spec("juliacall") is not None


def parse_version(text: str) -> Optional[Version]:
    """``"julia version 1.10.4"`` -> ``(1, 10, 4)``; ``None`` for anything else."""
    words = text.strip().split()
    if len(words) < 3 or words[0].lower() != "julia" or words[1].lower() != "version":
        return None
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", words[2])
    if not match:
        return None
    major, minor, patch = map(int, match.groups())
    return major, minor, patch


def julia_version(executable: str, timeout: float = VERSION_TIMEOUT_S) -> Tuple[Optional[Version], str]:
    """Run ``executable --version``; returns ``(version, "")`` or ``(None, why_not)``."""
    try:
        result = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{executable} does not run ({type(error).__name__}: {error})"
    version = parse_version(result.stdout)
    if result.returncode != 0 or version is None:
        return None, f"{executable} is not a Julia executable (`--version` printed {result.stdout.strip()!r})"
    return version, ""


def version_string(version: Optional[Version]) -> str:
    return "unknown" if version is None else ".".join(map(str, version))


def juliapkg_project() -> str:
    """The Julia project juliapkg resolves into (same rule as juliapkg's ``state.py``)."""
    project = os.environ.get("PYTHON_JULIAPKG_PROJECT")
    if project:
        return project
    if sys.prefix != sys.base_prefix:
        return os.path.join(sys.prefix, "julia_env")
    if os.environ.get("CONDA_PREFIX"):
        return os.path.join(os.environ["CONDA_PREFIX"], "julia_env")
    depot = os.environ.get("JULIA_DEPOT_PATH", "").split(os.pathsep)[0] or os.path.join(
        os.path.expanduser("~"), ".julia")
    return os.path.join(depot, "environments", "pyjuliapkg")


def _juliaup_executables() -> List[str]:
    """Executables juliaup has installed, newest first (read from ``juliaup.json``)."""
    depot = os.environ.get("JULIAUP_DEPOT_PATH") or os.path.join(os.path.expanduser("~"), ".julia")
    meta = os.path.join(depot, "juliaup", "juliaup.json")
    try:
        with open(meta) as file:
            installed = json.load(file).get("InstalledVersions", {})
    except (OSError, ValueError, AttributeError):
        return []
    found = []
    for name, info in installed.items():
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", str(name))
        if not match or not isinstance(info, dict) or "Path" not in info:
            continue
        exe = os.path.join(depot, "juliaup", info["Path"], "bin", "julia" + (".exe" if os.name == "nt" else ""))
        found.append((tuple(int(g) for g in match.groups()), exe))
    return [exe for _, exe in sorted(found, reverse=True)]


def _check(executable: str, source: str) -> Tuple[Optional[Version], Optional[str]]:
    version, why = julia_version(executable)
    if version is None:
        return None, f"{source}: {why}"
    if version < MIN_VERSION:
        return version, (f"{source}: Julia {version_string(version)} at {executable} is too old "
                         f"(need >= {version_string(MIN_VERSION)}; juliacall does not run on 1.10.0-1.10.2)")
    return version, None


def _search() -> Tuple[Optional[str], Optional[Version], str, Optional[str], List[str], List[str]]:
    searched: List[str] = []
    problems: List[str] = []
    # 1 and 2: explicit settings are used or fail; juliapkg/juliacall try nothing else either.
    exe, project = os.environ.get("PYTHON_JULIACALL_EXE"), os.environ.get("PYTHON_JULIACALL_PROJECT")
    explicit = []
    if exe and project:
        explicit.append(("PYTHON_JULIACALL_EXE", exe))
    elif os.environ.get("PYTHON_JULIAPKG_EXE"):
        explicit.append(("PYTHON_JULIAPKG_EXE", os.environ["PYTHON_JULIAPKG_EXE"]))
    if explicit:
        source, value = explicit[0]
        path = shutil.which(value) or value
        searched.append(f"{source}={value}")
        version, problem = _check(path, source)
        return path, version, source, problem, searched, problems
    searched.append("PYTHON_JULIAPKG_EXE (unset)")
    # 3-5: the first compatible one wins, as in juliapkg.
    candidates = []
    install = os.path.join(juliapkg_project(), "pyjuliapkg", "install", "bin", "julia")
    searched.append(f"juliapkg's install dir {os.path.dirname(os.path.dirname(install))}")
    if os.path.isfile(install):
        candidates.append((install, "juliapkg install"))
    searched.append("juliaup")
    candidates += [(path, "juliaup") for path in _juliaup_executables() if os.path.isfile(path)]
    searched.append("PATH")
    on_path = shutil.which("julia")
    if on_path:
        candidates.append((on_path, "PATH"))
    for path, source in candidates:
        version, problem = _check(path, source)
        if problem is None:
            return path, version, source, None, searched, problems
        problems.append(problem)
    why = "no Julia found" if not problems else "no compatible Julia found (" + "; ".join(problems) + ")"
    return None, None, "", why, searched, problems


_CACHE: dict = {}
_ENVIRONMENT_KEYS = ("PATH", "HOME", "PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT",
                     "PYTHON_JULIAPKG_EXE", "PYTHON_JULIAPKG_PROJECT", "PYTHON_JULIAPKG_OFFLINE",
                     "JULIA_DEPOT_PATH", "JULIAUP_DEPOT_PATH", "CONDA_PREFIX", AUTO_INSTALL_VARIABLE)


def detect(refresh: bool = False) -> Detection:
    """Search once per environment (cached on the variables that steer the search)."""
    key = tuple(os.environ.get(name) for name in _ENVIRONMENT_KEYS)
    if not refresh and key in _CACHE:
        return _CACHE[key]
    executable, version, source, problem, searched, problems = _search()
    notes = []
    if os.environ.get("PYTHON_JULIACALL_EXE") and not os.environ.get("PYTHON_JULIACALL_PROJECT"):
        notes.append("PYTHON_JULIACALL_EXE is ignored without PYTHON_JULIACALL_PROJECT")
    if source == "PYTHON_JULIACALL_EXE":
        notes.append("PYTHON_JULIACALL_PROJECT must already contain PythonCall (matching juliacall) "
                     "and PycdeqBridge: juliapkg is bypassed")
    detection = Detection(executable=executable, version=version, source=source, problem=problem,
                          juliacall=juliacall_installed(), offline=offline(),
                          auto_install=auto_install(), searched=tuple(searched), notes=tuple(notes))
    _CACHE[key] = detection
    return detection


def explain(detection: Detection) -> str:
    """One paragraph for ``status()``: what was found, what is missing, how to fix it."""
    parts = []
    if detection.julia_found:
        parts.append(f"Julia {version_string(detection.version)} at {detection.executable} "
                     f"(found via {detection.source})")
    else:
        parts.append(f"{detection.problem}; searched: {', '.join(detection.searched)}")
        if detection.offline:
            parts.append("PYTHON_JULIAPKG_OFFLINE=yes: nothing will be downloaded")
        elif detection.auto_install:
            parts.append(f"{AUTO_INSTALL_VARIABLE}=yes: juliapkg will download Julia on first use")
        else:
            parts.append(f"automatic download is off (set {AUTO_INSTALL_VARIABLE}=yes to let "
                         "juliapkg download Julia)")
    parts.append("juliacall is installed" if detection.juliacall else
                 "juliacall is not installed (pip install 'pycdeq[julia]')")
    parts.extend(detection.notes)
    text = "; ".join(parts) + "."
    if not detection.julia_found:
        text += " " + FIX_JULIA
    if not detection.juliacall:
        text += " " + FIX_JULIACALL
    return text
