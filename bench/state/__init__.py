"""Desired-state benchmarks: what one write through the admin API costs.

    .venv/bin/python -m bench.state.write [--database sqlite|postgres|both] [--quick]

Each prints its setup and figures and writes ``bench/results/state-<name>.json``.
"""
