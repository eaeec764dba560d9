"""The package as pip sees it: one version everywhere, and a wheel with the typing marker, the
license, the wire-format files and a light core whose torch is a range, not a pin.

The wheel is built from a copy of the checkout (the build writes egg-info beside the sources);
.ci/wheel goes further and installs it into a fresh venv and runs it from /tmp.
"""

from __future__ import annotations

import email
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import fedfleet

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "scikit-learn", "safetensors", "pydantic", "typer", "rich", "tomli-w"}
EXTRAS = {
    "deploy",
    "privacy",
    "he",
    "fast",
    "ray",
    "track",
    "report",
    "llm",
    "hf",
    "docs",
    "all",
    "dev",
}


def test_version_flag_prints_the_one_version():
    proc = subprocess.run(
        [sys.executable, "-m", "fedfleet", "--version"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"fedfleet {fedfleet.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", fedfleet.__version__)
    # pyproject.toml reads it from fedfleet/_version.py rather than writing it again
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "fedfleet._version.__version__"


def test_installed_metadata_has_the_same_version():
    try:
        installed = importlib.metadata.version("fedfleet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fedfleet is not installed (run from src/ alone)")
    assert installed == fedfleet.__version__


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs `build` (dev extra)")
def test_wheel_is_typed_licensed_and_light(tmp_path):
    src = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("fedfleet-*.whl")
    assert wheel.name == f"fedfleet-{fedfleet.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"fedfleet-{fedfleet.__version__}.dist-info"
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
    assert {"fedfleet/py.typed", "fedfleet/_proto/fedfleet.proto", "fedfleet/cli.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert set(meta.get_all("Provides-Extra")) == EXTRAS

    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert {re.split(r"[ <>=!~;\[]", r, maxsplit=1)[0].lower() for r in core} == CORE
    (torch,) = [r for r in core if r.startswith("torch")]
    assert "==" not in torch and ">=" in torch  # a range: installs next to the user's torch
    deploy = [r for r in meta.get_all("Requires-Dist") if 'extra == "deploy"' in r]
    assert {r.split(">")[0].split("<")[0] for r in deploy} == {"grpcio", "protobuf", "cryptography"}
