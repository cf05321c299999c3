"""Turnout's control plane: admin API, desired-state store and xDS server."""

__version__ = "0.1.0"
