"""Processes that sit in the data path beside Envoy; the batcher is the first."""
