"""Install footprint of fedfleet against Flower, pfl-research and NVFlare, measured in one run.

For each package: a fresh virtualenv with the local CPU torch 2.13.0 installed first (not timed:
every framework here needs it), then ``pip install SPEC`` timed, the venv's size above the
torch-only venv, the median of three ``python -c "import MODULE"`` and of three ``CLI --help``
(where the package has a command line). Ratios are against fedfleet's core install measured in
the same run. Needs the package index; takes ~10 minutes on a 2-core machine.

    python bench/install_footprint.py [--only fedfleet,fedfleet-all] [--out bench/out/install.jsonl]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"

# name -> (pip spec, module to import, console script or None)
PACKAGES = {
    "fedfleet": (str(ROOT), "fedfleet", "fedfleet"),
    "fedfleet-all": (f"{ROOT}[all]", "fedfleet", "fedfleet"),
    "flwr": ("flwr[simulation]", "flwr", "flwr"),
    "pfl": ("pfl[pytorch]", "pfl", None),
    "nvflare": ("nvflare", "nvflare", "nvflare"),
}


def _size_mb(path: Path) -> float:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20
    )


def _median_s(argv: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, workdir: Path) -> dict[str, object]:
    spec, module, cli = PACKAGES[name]
    venv = workdir / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-c", str(CONSTRAINTS), "torch"], check=True, timeout=1800)
    base_mb = _size_mb(venv)
    t0 = time.perf_counter()
    subprocess.run([*pip, "-c", str(CONSTRAINTS), spec], check=True, timeout=3600)
    install_s = time.perf_counter() - t0
    py = str(venv / "bin" / "python")
    row: dict[str, object] = {
        "name": name,
        "spec": spec.replace(str(ROOT), "."),
        "install_s": round(install_s, 1),
        "added_mb": round(_size_mb(venv) - base_mb),
        "import_s": round(_median_s([py, "-c", f"import {module}"]), 2),
        "import_torch_s": round(_median_s([py, "-c", "import torch"]), 2),
    }
    if cli is not None:
        row["help_s"] = round(_median_s([str(venv / "bin" / cli), "--help"]), 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PACKAGES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "install.jsonl")
    args = parser.parse_args()
    names = args.only.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedfleet-install-") as tmp:
        for name in names:
            rows.append(measure(name, Path(tmp)))
            shutil.rmtree(Path(tmp) / name)
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for row in rows:
            f.write(json.dumps({**row, "time": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    base = next((r for r in rows if r["name"] == "fedfleet"), rows[0])
    print("\n| package | install s | x | added MB | x | import s | x | --help s | x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [str(r["name"])]
        for key in ("install_s", "added_mb", "import_s", "help_s"):
            if key in r and key in base:
                cells += [str(r[key]), f"{float(r[key]) / max(float(base[key]), 1e-9):.1f}"]
            else:
                cells += ["-", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
