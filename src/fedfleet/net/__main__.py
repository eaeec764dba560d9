"""``python -m fedfleet.net server|client|certs``."""

from fedfleet.net.cli import app

app()
