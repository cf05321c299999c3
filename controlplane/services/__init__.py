"""Services: the operations on desired state and access that the admin API exposes.

Each runs inside the caller's transaction (one unit of work per request) and
records its change through :mod:`controlplane.services.changes`; the caller
commits once, at the request boundary.
"""
