"""The admin REST API (FastAPI): thin routers over the domain services."""

from controlplane.api.app import create_app

__all__ = ["create_app"]
