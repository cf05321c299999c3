"""Turnout's batcher: coalesces concurrent inference calls into batched upstream calls.

Run one beside each model-server replica::

    python -m filters.batcher --upstream http://127.0.0.1:9001 --listen 127.0.0.1:9101

It batches KServe v2 infer calls (JSON, or binary tensors after a JSON header
as tritonclient sends them, answering each caller in the output form it asked
for), OpenAI embeddings and KServe v1 predict calls.

Public surface:

- ``BatcherConfig``, ``start_batcher`` (tests: returns a ``RunningBatcher``),
  ``run_batcher`` (the CLI: runs until stopped).
- ``BatchingPolicy`` and the ``PolicySource`` seam; ``HttpPolicySource``
  polls the control plane's admin API; ``policy_from_json`` reads its field.

Errors: ``PolicyError`` (a ``ValueError``) for an invalid policy. Request
failures are HTTP answers, never exceptions: 400 malformed input (that
request only), 429 queue full (with ``Retry-After``), 503 deadline cannot be
met, 502/504 upstream gave no answer.
"""

from ._policy import BatchingPolicy, HttpPolicySource, PolicyError, PolicySource, policy_from_json
from ._server import BatcherConfig, RunningBatcher, run_batcher, start_batcher

__all__ = [
    "BatcherConfig",
    "BatchingPolicy",
    "HttpPolicySource",
    "PolicyError",
    "PolicySource",
    "RunningBatcher",
    "policy_from_json",
    "run_batcher",
    "start_batcher",
]
