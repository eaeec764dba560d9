"""``fedfleet new NAME``: a project folder a user edits, as ``flwr new`` gives.

The folder holds a model (``model.py``: ``build(input_shape, num_classes) -> nn.Module``), a
data loader (``data.py``: ``load(seed) -> TaskData``), a run config (``fedfleet.toml``) that names
both (``model.name = "custom"``, ``data.name = "custom"``: :mod:`fedfleet.runs._user_code`), a
pytest test and a README. ``fedfleet run --config NAME/fedfleet.toml`` then trains the project's
own model on its own data.

Example:
    >>> new_project("demo")  # doctest: +SKIP
    [PosixPath('demo/model.py'), PosixPath('demo/data.py'), ...]
"""

from __future__ import annotations

from pathlib import Path

from fedfleet.errors import FedfleetError
from fedfleet.scaffold._templates import FILES

__all__ = ["ProjectExists", "new_project"]


class ProjectExists(FedfleetError, FileExistsError):
    """The project's folder exists and is not empty (``fedfleet new`` never overwrites)."""


def new_project(path: str | Path) -> list[Path]:
    """Write a new project into the folder ``path`` (created; it may exist only if empty).

    The project's name is the folder's name. Returns the files written.

    Raises:
        ProjectExists: ``path`` is a file, or a folder that is not empty.
    """
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "a folder that is not empty"
        raise ProjectExists(
            f"{folder} is {what}; fedfleet new writes a project only into a new or empty "
            "folder: pick another name, or remove it first"
        )
    name = folder.resolve().name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for file, template in FILES.items():
        target = folder / file
        text = template.replace("{{name}}", name).replace("{{path}}", folder.as_posix())
        target.write_text(text)
        written.append(target)
    return written
