"""``fedfleet server``, ``client`` and ``certs``: defined in :mod:`fedfleet._deploy_cli`, outside
this package so that ``fedfleet --help`` need not import the deployment; re-exported here."""

from fedfleet._deploy_cli import (
    CLIENT_KEYS,
    SERVER_KEYS,
    app,
    certs,
    client,
    read_config,
    server,
)

__all__ = ["CLIENT_KEYS", "SERVER_KEYS", "app", "certs", "client", "read_config", "server"]
