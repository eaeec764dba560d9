"""``python -m fedfleet`` is the ``fedfleet`` command."""

from fedfleet.cli import main

main()
