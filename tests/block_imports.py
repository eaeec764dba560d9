"""Run fedfleet's command line, or Python code, with packages made unimportable as if they were
not installed, and optionally record which modules the process loaded.

    python block_imports.py --block grpc,numba -- server --insecure   # fedfleet server ...
    python block_imports.py --block all -c "import fedfleet"
    python block_imports.py --modules-to loaded.json -- --help         # what fedfleet --help loads
"""

from __future__ import annotations

import atexit
import json
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

OPTIONAL = [
    "grpc", "google.protobuf", "cryptography", "dp_accounting", "phe", "gmpy2", "tenseal",
    "numba", "ray", "matplotlib", "tensorboard", "mlflow", "datasets", "transformers", "peft",
]  # fmt: skip
"""Every package an extra installs (fedfleet._extras.EXTRA_OF), by import name."""


class Blocked(MetaPathFinder):
    """Finds ``names`` (and their submodules) nowhere, as an environment without them would."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if any(name == b or name.startswith(b + ".") for b in self.names):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _write_modules(path: Path) -> None:
    path.write_text(json.dumps(sorted(sys.modules)))


def main(argv: list[str]) -> None:
    block: list[str] = []
    while argv and argv[0] in ("--block", "--modules-to"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--block":
            block = OPTIONAL if value == "all" else value.split(",")
        else:
            atexit.register(_write_modules, Path(value))
    sys.meta_path.insert(0, Blocked(block))
    if argv[0] == "-c":
        exec(compile(argv[1], "<block_imports -c>", "exec"), {"__name__": "__main__"})
        return
    assert argv[0] == "--", argv
    sys.argv = ["fedfleet", *argv[1:]]
    from fedfleet.cli import main as fedfleet_main

    fedfleet_main()


if __name__ == "__main__":
    main(sys.argv[1:])
