"""``fedfleet report``: real runs written by ``fedfleet run --out``, reported by a real process,
and the PNG and HTML files it writes read back."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedfleet.errors import RunDirError
from fedfleet.report import DPI, FIGSIZE, config_differences, load_run, load_runs, write_report

Image = pytest.importorskip("PIL.Image", reason="reading the PNGs back needs Pillow")
pytest.importorskip("matplotlib", reason="fedfleet report needs the report extra (matplotlib)")

SIZE = (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
BLUE, RED = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)  # the first two runs' colours


def _fedfleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedfleet", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two short runs: FedAvg with federated evaluation and client profiles (simulated time),
    and DP-FedAvg with another learning rate (epsilon)."""
    base = tmp_path_factory.mktemp("runs")
    a, b = base / "fedavg", base / "dp"
    common = ["--quiet", "--set", "rounds=3", "--set", "clients.speed_spread=4"]
    proc = _fedfleet(
        "run",
        "--out",
        str(a),
        *common,
        "--set",
        "eval.federated_every=1",
        "--set",
        "data.client_test_fraction=0.2",
    )
    assert proc.returncode == 0, proc.stderr
    proc = _fedfleet(
        "run",
        "--out",
        str(b),
        *common,
        "--set",
        "strategy.name=dpfedavg",
        "--set",
        "privacy.noise_multiplier=0.5",
        "--set",
        "client.lr=0.05",
    )
    assert proc.returncode == 0, proc.stderr
    return a, b


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == SIZE
        return np.asarray(img.convert("RGB"))


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.all(pixels == np.array(rgb, dtype=np.uint8), axis=-1).any())


def _section(html: str, title: str) -> str:
    start = html.index(f"<h2>{title}</h2>")
    end = html.find("<h2>", start + 1)
    return html[start : end if end != -1 else len(html)]


def test_report_plots_both_runs_and_compares_them_on_one_page(runs, tmp_path):
    a, b = runs
    out = tmp_path / "report"
    proc = _fedfleet("report", str(a), str(b), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out / "index.html") in proc.stdout.replace("\n", "")

    drawn = sorted(p.name for p in out.glob("*.png"))
    expected = ["bytes", "client_accuracy", "epsilon", "rounds", "sim_time", "wall_time"]
    assert drawn == [f"{name}.png" for name in expected]
    pixels = {p.stem: _pixels(p) for p in out.glob("*.png")}
    # every run overlaid, each in its colour
    for name in ("rounds", "sim_time", "wall_time", "bytes"):
        assert _has_colour(pixels[name], BLUE) and _has_colour(pixels[name], RED), name
    # only the federated-evaluation run has client accuracy, only the DP run an epsilon
    assert _has_colour(pixels["client_accuracy"], BLUE)
    assert not _has_colour(pixels["client_accuracy"], RED)
    assert _has_colour(pixels["epsilon"], RED) and not _has_colour(pixels["epsilon"], BLUE)

    html = (out / "index.html").read_text()
    for png in out.glob("*.png"):  # embedded, and linked to the file beside the page
        assert base64.b64encode(png.read_bytes()).decode() in html
        assert f'href="{png.name}"' in html

    final = _section(html, "Final metrics")
    for run in (a, b):
        assert f"<th>{run.name}</th>" in final
        last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert f"{last['test_accuracy']:.4f}" in final
    last_dp = json.loads((b / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"{last_dp['dp_epsilon']:.3f}" in final

    diff = _section(html, "Configuration differences")
    keys = set(re.findall(r'<td class="key">([^<]+)</td>', diff))
    assert {"client.lr", "strategy.name", "privacy.noise_multiplier"} <= keys
    assert "eval.federated_every" in keys and "data.client_test_fraction" in keys
    # equal in both runs: not shown
    assert not keys & {"seed", "rounds", "data.name", "model.name", "clients.speed_spread"}
    assert "<td>0.2</td><td>0.05</td>" in diff  # client.lr, side by side


def test_config_differences_are_the_keys_whose_values_differ(runs):
    a, b = load_runs(runs)
    diff = config_differences([a, b])
    assert diff["client.lr"] == [0.2, 0.05]
    assert diff["strategy.name"] == ["fedavg", "dpfedavg"]
    assert diff["privacy.noise_multiplier"] == [None, 0.5]  # a section only the DP run has
    assert all(a.config.get(k) != b.config.get(k) for k in diff)
    same = set(a.config) & set(b.config) - set(diff)
    assert same and all(a.config[k] == b.config[k] for k in same)
    assert config_differences([a, a]) == {}


def test_bytes_sent_gets_its_plot_and_a_rerun_removes_stale_figures(runs, tmp_path):
    a, _ = runs
    uncounted = tmp_path / "uncounted"  # a run from before records counted bytes
    shutil.copytree(a, uncounted)
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert all(r["uplink_bytes"] == 4 * 9_610 * r["num_clients"] for r in records)
    with (uncounted / "metrics.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if "bytes" not in k}) + "\n")
    out = tmp_path / "report"
    write_report([uncounted, a], out)
    assert _has_colour(_pixels(out / "bytes.png"), RED)  # a is the second run
    assert not _has_colour(_pixels(out / "bytes.png"), BLUE)  # uncounted has no byte counts
    total = sum(r["uplink_bytes"] + r["downlink_bytes"] for r in records)
    assert f"{total / 1e6:,.2f} MB" in (out / "index.html").read_text()

    write_report([uncounted], out)  # one run, no DP, no bytes: those figures go
    assert not (out / "epsilon.png").exists() and not (out / "bytes.png").exists()
    assert (out / "rounds.png").exists()
    assert "One run: nothing to compare." in (out / "index.html").read_text()


def test_a_torn_last_line_is_left_out_and_a_torn_middle_line_is_an_error(runs, tmp_path):
    a, _ = runs
    run = tmp_path / "killed"
    shutil.copytree(a, run)
    lines = (a / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"round": 4, "train_lo')
    assert [r["round"] for r in load_run(run).records] == [1, 2, 3]

    (run / "metrics.jsonl").write_text("\n".join([lines[0], '{"round": 2, "tr', lines[2]]))
    with pytest.raises(RunDirError, match=r"metrics\.jsonl' line 2 is not JSON"):
        load_run(run)


def test_runs_sharing_a_directory_name_are_told_apart(runs, tmp_path):
    a, _ = runs
    shutil.copytree(a, tmp_path / "x" / "run")
    shutil.copytree(a, tmp_path / "y" / "run")
    labels = [r.label for r in load_runs([tmp_path / "x" / "run", tmp_path / "y" / "run"])]
    assert labels == ["x/run", "y/run"]


def test_bad_run_directories_are_named_in_the_error(runs, tmp_path):
    a, _ = runs
    missing = tmp_path / "nope"
    with pytest.raises(RunDirError, match=f"{re.escape(str(missing))}.*does not exist"):
        load_run(missing)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(RunDirError, match=f"{re.escape(str(empty_dir))}.*no config.toml"):
        load_run(empty_dir)
    no_rounds = tmp_path / "started"
    no_rounds.mkdir()
    shutil.copy(a / "config.toml", no_rounds)
    (no_rounds / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="holds no rounds"):
        load_run(no_rounds)
    bad_toml = tmp_path / "badtoml"
    shutil.copytree(a, bad_toml)
    (bad_toml / "config.toml").write_text("rounds = = 3\n")
    with pytest.raises(RunDirError, match=f"{re.escape(str(bad_toml))}.*not valid TOML"):
        load_run(bad_toml)
    with pytest.raises(RunDirError, match="no run directories"):
        load_runs([])

    # through the command line: exit status 2, the path named, no report written
    out = tmp_path / "report"
    proc = _fedfleet("report", str(a), str(missing), "--out", str(out))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and str(missing) in proc.stderr.replace("\n", "")
    assert not out.exists()


def test_fedbuff_model_versions_serve_as_rounds(runs, tmp_path):
    a, _ = runs
    run = tmp_path / "fedbuff"
    shutil.copytree(a, run)
    records = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    with (run / "metrics.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps({"version": r.pop("round"), **r}) + "\n")
    assert [r["round"] for r in load_run(run).records] == [1, 2, 3]
