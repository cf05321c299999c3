"""Data-plane telemetry: Envoy's statistics, streamed to the control plane by
every proxy's stat sink, summed per model version and tenant over a sliding
window (``window``), and exposed to the admin API and Prometheus."""
