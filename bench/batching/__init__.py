"""Batching benchmark: goodput of no batching, fixed-timeout batching and Turnout's batcher."""
