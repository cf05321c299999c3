"""The cost of the traffic window: 100 simulated proxies' stat sinks against
one control plane (``python -m bench.telemetry.run``)."""
