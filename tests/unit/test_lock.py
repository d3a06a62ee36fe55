"""The locks are the versions that were tested: uv.lock resolves what pyproject.toml asks for, every package
in every lock is pinned by hash, and requirements.txt (what the functions' build installs) pins exactly
uv.lock's runtime packages. `make lock` writes all of them; these tests fail when one was edited alone."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
LOCKS = [ROOT / "uv.lock", ROOT / "tools" / "checkov" / "uv.lock", ROOT / "tools" / "terraform-provider" / "uv.lock"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path = ROOT / "uv.lock") -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _root(lock: dict[str, Any], name: str = "agent-fleet-manager") -> dict[str, Any]:
    return next(p for p in lock["package"] if p["name"] == name)


def _asked(requirements: list[str]) -> dict[str, SpecifierSet]:
    return {_norm(r.name): r.specifier for r in map(Requirement, requirements)}


def _locked(entries: list[dict[str, Any]]) -> dict[str, SpecifierSet]:
    return {_norm(e["name"]): SpecifierSet(e.get("specifier", "")) for e in entries}


def _runtime_closure(lock: dict[str, Any]) -> set[tuple[str, str]]:
    """(name, version) of every package the server needs at run time (not the developers' group), on any
    platform or Python: what a universal export lists, markers aside."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in lock["package"]:
        by_name.setdefault(package["name"], []).append(package)
    seen: set[tuple[str, str]] = set()
    todo = list(_root(lock)["dependencies"])
    while todo:
        ref = todo.pop()
        for package in by_name[ref["name"]]:
            if "version" in ref and package["version"] != ref["version"]:
                continue  # the lock names which of a package's forks it means
            key = (package["name"], package["version"])
            if key in seen:
                continue
            seen.add(key)
            todo.extend(package.get("dependencies", []))
            for extra in ref.get("extra", []):
                todo.extend(package.get("optional-dependencies", {}).get(extra, []))
    return seen


def test_the_lock_resolves_what_pyproject_asks_for() -> None:
    """`make setup` installs with `uv sync --locked`, which refuses a stale lock; this says so without uv."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    metadata = _root(_lock())["metadata"]
    asked = _asked([d for d in project["project"]["dependencies"] if not d.startswith("fleet-agent")])
    locked = _locked([e for e in metadata["requires-dist"] if e["name"] != "fleet-agent"])
    assert locked == asked
    assert _locked(metadata["requires-dev"]["dev"]) == _asked(project["dependency-groups"]["dev"])
    sdk = _root(_lock(), "fleet-agent")
    assert sdk["source"] == {"editable": "sdk"}
    sdk_project = tomllib.loads((ROOT / "sdk" / "pyproject.toml").read_text())
    extras = sdk_project["project"].get("optional-dependencies", {})
    plain = [e for e in sdk["metadata"]["requires-dist"] if "marker" not in e]
    assert _locked(plain) == _asked(sdk_project["project"]["dependencies"])
    for extra, requirements in extras.items():  # the integrations' optional extras, each locked as asked
        marked = [e for e in sdk["metadata"]["requires-dist"] if e.get("marker") == f"extra == '{extra}'"]
        assert _locked(marked) == _asked(requirements), extra
    assert sdk["metadata"].get("provides-extras", []) == list(extras)


def test_every_locked_package_is_pinned_by_hash() -> None:
    for path in LOCKS:
        lock = _lock(path)
        registry = [p for p in lock["package"] if "registry" in p["source"]]
        assert registry, path
        for package in registry:
            files = [package["sdist"]] if "sdist" in package else []
            files += package.get("wheels", [])
            assert files, f"{path.name}: {package['name']} has no file"
            for file in files:
                assert file["hash"].startswith("sha256:"), f"{path.name}: {package['name']} {file}"


def test_one_uv_release_writes_and_reads_every_lock() -> None:
    pinned = re.search(r"^uv==(\S+) \\$", (ROOT / "tools" / "uv" / "requirements.txt").read_text(), re.M)
    assert pinned is not None
    assert "--hash=sha256:" in (ROOT / "tools" / "uv" / "requirements.txt").read_text()
    for path in LOCKS:
        project = tomllib.loads((path.parent / "pyproject.toml").read_text())
        assert project["tool"]["uv"]["required-version"] == f"=={pinned.group(1)}", path


def test_requirements_txt_pins_exactly_the_locked_runtime_packages() -> None:
    """What Cloud Functions builds is what `make test` ran: every line an exact pin of the lock's version,
    and every runtime package of the lock listed (a fork per Python version keeps its marker)."""
    lines = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "./sdk"
    pinned: set[tuple[str, str]] = set()
    for line in lines[1:]:
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", line
        pinned.add((_norm(requirement.name), spec.version))
    locked = {(_norm(name), version) for name, version in _runtime_closure(_lock())}
    locked -= {("agent-fleet-manager", "0.1.0"), ("fleet-agent", _root(_lock(), "fleet-agent")["version"])}
    assert pinned == locked


def test_the_functions_runtime_gets_one_version_of_each_package() -> None:
    """On the runtime Terraform deploys (Linux, CPython 3.x of functions.tf), requirements.txt's markers leave
    exactly one pin per package, the scientific stack the models were checked under among them."""
    runtime = re.search(r'runtime\s*=\s*"python3(\d+)"', (ROOT / "terraform" / "functions.tf").read_text())
    assert runtime is not None
    version = f"3.{runtime.group(1)}"
    assert version in SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    environment = {
        "python_version": version,
        "python_full_version": f"{version}.0",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }
    installed: dict[str, list[str]] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" not in line or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            installed.setdefault(_norm(requirement.name), []).append(str(requirement.specifier))
    assert {name: pins for name, pins in installed.items() if len(pins) != 1} == {}
    assert {"numpy", "scikit-learn", "scipy", "functions-framework"} <= installed.keys()


def test_the_tests_run_on_the_python_the_functions_and_the_training_image_run_on() -> None:
    """make setup builds .venv with RUNTIME_PYTHON, which must be the functions' runtime and the image's base."""
    make = re.search(r"^RUNTIME_PYTHON := (\d+)\.(\d+)$", (ROOT / "Makefile").read_text(), re.M)
    runtime = re.search(r'runtime\s*=\s*"python(\d)(\d+)"', (ROOT / "terraform" / "functions.tf").read_text())
    image = re.search(r"^FROM python:(\d+)\.(\d+)-slim$", (ROOT / "jobs" / "Dockerfile").read_text(), re.M)
    assert make and runtime and image
    assert make.groups() == runtime.groups() == image.groups()
    assert "$(UV) sync --locked --python $(RUNTIME_PYTHON)" in (ROOT / "Makefile").read_text()


def test_the_build_backend_is_pinned_alike_for_the_project_and_the_sdk() -> None:
    pins = {
        path: tomllib.loads((ROOT / path).read_text())["build-system"]["requires"]
        for path in ("pyproject.toml", "sdk/pyproject.toml")
    }
    assert len(set(map(tuple, pins.values()))) == 1, pins
    (requirement,) = map(Requirement, pins["pyproject.toml"])
    assert requirement.name == "setuptools" and next(iter(requirement.specifier)).operator == "=="


def test_no_virtualenv_of_the_makefile_is_deployed() -> None:
    """The functions' source archive is the repository root: every virtualenv make creates there, and the
    developers' tools, are excluded from it."""
    venvs = re.findall(r"^\w*VENV \??:?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert ".venv" in venvs and len(venvs) >= 5, venvs
    excluded = re.search(r"excludes\s*=\s*\[(.*?)\]", (ROOT / "terraform" / "functions.tf").read_text(), re.S)
    assert excluded is not None
    names = set(re.findall(r'"([^"]+)"', excluded.group(1)))
    assert set(venvs) | {"tools"} <= names, set(venvs) - names
