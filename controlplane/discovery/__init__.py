"""Kubernetes endpoint discovery: watches EndpointSlices and reports, per Service,
the endpoints that may take traffic. It stores nothing itself; the caller does."""
