"""``python -m fedfleet.net server|client|certs``."""

from fedfleet.net._cli import app

app()
