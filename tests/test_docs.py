"""The documentation stays true: every ``fedfleet run`` command the README and the docs show is a
valid configuration, and the site builds with ``mkdocs build --strict`` (broken links, missing
snippet sections and docstrings griffe cannot parse fail it)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedfleet.errors import ConfigError
from fedfleet.runs import load_config
from fedfleet.scaffold import new_project

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _run_commands() -> list[tuple[str, str, bool]]:
    """(page, arguments, valid) for every ``fedfleet run`` line in a fenced code block; a block
    that shows the command's ``error:`` output documents a refused configuration. A config in a
    folder that ``fedfleet new`` makes in the same block is checked in a fresh such project."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.search(r"(?:^|\s)fedfleet run\b(.*)$", line)
                if match and "--resume" not in match.group(1):
                    valid = "error:" not in block
                    found.append((str(page.relative_to(ROOT)), match.group(1), valid))
    return found


COMMANDS = _run_commands()


def test_the_docs_show_run_commands() -> None:
    pages = {page for page, _, _ in COMMANDS}
    assert "README.md" in pages and "docs/tutorials/simulate.md" in pages, pages
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(
    ("page", "args", "valid"), COMMANDS, ids=[f"{p}:{a[:40]}" for p, a, _ in COMMANDS]
)
def test_documented_run_command_is_a_valid_config(
    page: str, args: str, valid: bool, tmp_path: Path
) -> None:
    argv = shlex.split(args)
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a in ("--set", "-s")]
    config = next((argv[i + 1] for i, a in enumerate(argv) if a in ("--config", "-c")), None)
    path = ROOT / config if config else None
    if config is not None and not path.is_file():  # type: ignore[union-attr]
        project = Path(config).parts[0]
        assert f"fedfleet new {project}" in (ROOT / page).read_text(), f"{config} is nowhere"
        new_project(tmp_path / project)
        path = tmp_path / config
    if valid:
        load_config(path, overrides)  # raises ConfigError, naming the key, if invalid
    else:
        with pytest.raises(ConfigError):
            load_config(path, overrides)


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="the docs extra (mkdocs-material, mkdocstrings) is not installed",
)
def test_site_builds_strict_with_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    index = (site / "index.html").read_text()
    assert "Quick start" in index and "runs a real federated training run" in index  # README
    strategies = (site / "reference" / "strategies" / "index.html").read_text()
    assert "Federated averaging with uniform client sampling" in strategies  # FedAvg's docstring
    for page in (
        "tutorials/simulate",
        "tutorials/deploy",
        "tutorials/privacy",
        "tutorials/heterogeneity",
        "benchmarks",
        "comparison",
    ):
        assert (site / page / "index.html").is_file(), page
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "<table>" in bench  # the benchmark tables came through
