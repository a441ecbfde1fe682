"""Flower's entry points for a fedsc deployment (the apps live in ``fedsc.deploy``)."""

from fedsc.deploy.client_app import app as client_app
from fedsc.deploy.server_app import app as server_app

__all__ = ["client_app", "server_app"]
