"""Optional packages are optional: fedfleet imports, starts and simulates without any of them,
and a feature that needs one stops with one line naming the extra that installs it.

Each check is a real ``fedfleet`` process in which ``block_imports.py`` makes the packages
unimportable, as an environment without them would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedfleet._extras import EXTRA_OF, missing_extra, require
from fedfleet.errors import FedfleetError, MissingExtra

BLOCKER = Path(__file__).with_name("block_imports.py")
sys.path.insert(0, str(BLOCKER.parent))
from block_imports import OPTIONAL  # noqa: E402


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BLOCKER), *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def _loaded(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    proc = _run("--modules-to", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text()))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in {"torch", *OPTIONAL} or m in OPTIONAL)


def test_the_blocker_lists_every_optional_package():
    assert sorted(OPTIONAL) == sorted(EXTRA_OF)


def test_import_fedfleet_loads_neither_torch_nor_any_optional_package(tmp_path):
    loaded = _loaded(tmp_path, "-c", "import fedfleet; fedfleet.__version__")
    assert "fedfleet" in loaded
    assert _heavy(loaded) == []


def test_help_loads_neither_torch_nor_the_deployment_and_lists_every_command(tmp_path):
    out = tmp_path / "modules.json"
    proc = _run("--modules-to", str(out), "--", "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "datasets", "algorithms", "server", "client", "certs"):
        assert f" {command} " in proc.stdout, proc.stdout
    loaded = set(json.loads(out.read_text()))
    assert _heavy(loaded) == []
    assert not any(m.startswith(("fedfleet.net", "fedfleet.sim", "fedfleet.runs")) for m in loaded)


def test_every_public_name_loads_with_every_optional_package_blocked():
    code = textwrap.dedent("""
        import fedfleet, fedfleet.privacy, fedfleet.sim, fedfleet.strategies
        for module in (fedfleet, fedfleet.privacy, fedfleet.sim, fedfleet.strategies):
            for name in module.__all__:
                getattr(module, name)
        print(len(fedfleet.__all__), fedfleet.FedAvg.__module__, fedfleet.fedprox.__name__)
    """)
    proc = _run("--block", "all", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["44", "fedfleet.strategies._fedavg", "fedprox"]


def test_unknown_attribute_of_fedfleet_is_an_attribute_error():
    import fedfleet

    with pytest.raises(AttributeError, match="no attribute 'FedAvgg'"):
        fedfleet.FedAvgg  # noqa: B018


@pytest.mark.slow
def test_default_run_works_with_every_optional_package_blocked(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--set", "rounds=2", "--set", "data.num_clients=6", "--out", str(out), "-q"]
    proc = _run("--block", "all", "--", *args)
    assert proc.returncode == 0, proc.stderr
    assert "clients train vectorised" in proc.stderr  # numba missing: not the compiled loop
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert 0.0 < rows[-1]["test_accuracy"] <= 1.0


DEPLOY_LINE = (
    "error: the gRPC deployment (fedfleet.net) needs grpc, which is not installed: "
    "pip install 'fedfleet[deploy]'"
)


@pytest.mark.parametrize(
    "args",
    [
        ["server", "--insecure", "--port", "0", "--quiet"],
        ["client", "--server", "127.0.0.1:9", "--client-id", "0", "--insecure", "--quiet"],
        ["certs", "--out-dir", "certs"],
    ],
    ids=["server", "client", "certs"],
)
def test_deployment_without_the_deploy_extra_is_one_line_naming_it(tmp_path, args):
    proc = _run("--block", "grpc", "--", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == DEPLOY_LINE
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize(
    ("blocked", "sets", "extra"),
    [
        ("numba", ["executor=compiled"], "fast"),
        ("dp_accounting", ["strategy.name=dpfedavg", "privacy.target_epsilon=8"], "privacy"),
        ("ray", ["executor=ray"], "ray"),
    ],
    ids=["compiled-numba", "dp-accounting", "ray"],
)
def test_a_run_that_needs_an_extra_names_it_in_one_line(tmp_path, blocked, sets, extra):
    args = ["run", "--set", "rounds=1", "-q"] + [a for s in sets for a in ("--set", s)]
    proc = _run("--block", blocked, "--", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert f"needs {blocked}, which is not installed: pip install 'fedfleet[{extra}]'" in lines[0]


def test_an_import_no_require_guards_still_names_the_extra(tmp_path):
    """A command importing an optional package directly gets the same line from ``main``."""
    code = textwrap.dedent("""
        import sys
        from fedfleet.cli import app, main

        @app.command()
        def plot() -> None:
            import matplotlib.pyplot  # noqa: F401

        sys.argv = ["fedfleet", "plot"]
        main()
    """)
    proc = _run("--block", "matplotlib", "-c", code)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: this command needs matplotlib, which is not installed: "
        "pip install 'fedfleet[report]'"
    )


def test_require_returns_the_module_or_names_the_extra():
    assert require("json", extra="core", feature="JSON").dumps([1]) == "[1]"
    with pytest.raises(MissingExtra) as caught:
        require("fedfleet_no_such_module", extra="deploy", feature="the widget")
    assert str(caught.value) == (
        "the widget needs fedfleet_no_such_module, which is not installed: "
        "pip install 'fedfleet[deploy]'"
    )
    assert isinstance(caught.value, FedfleetError) and isinstance(caught.value, ImportError)


def test_require_lets_a_broken_install_raise_its_own_error(tmp_path, monkeypatch):
    """A package that is there but fails inside its own import is not a missing extra."""
    (tmp_path / "half_installed").mkdir()
    (tmp_path / "half_installed" / "__init__.py").write_text("import its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        require("half_installed", extra="x", feature="y")
    assert not isinstance(caught.value, MissingExtra)
    assert caught.value.name == "its_missing_dependency"


def test_missing_extra_maps_an_import_error_to_its_extra():
    found = missing_extra(ModuleNotFoundError("no grpc._cython", name="grpc._cython"))
    assert found is not None and "pip install 'fedfleet[deploy]'" in str(found)
    found = missing_extra(ModuleNotFoundError("no google", name="google"))
    assert found is not None and "fedfleet[deploy]" in str(found)  # google.protobuf's parent
    assert missing_extra(ModuleNotFoundError("no yaml", name="yaml")) is None
    assert missing_extra(ImportError("cannot import name 'x'")) is None
