"""``python -m bench.batching``: see bench/batching/run.py."""

from .run import main

main()
