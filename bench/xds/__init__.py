"""xDS benchmarks: propagation to real Envoys, translation scale, control-plane memory.

    .venv/bin/python -m bench.xds.propagation [--quick]
    .venv/bin/python -m bench.xds.scale [--quick]
    .venv/bin/python -m bench.xds.memory [--quick]

Each prints its setup and figures and writes ``bench/results/xds-<name>.json``.
"""
