"""``python -m filters.batcher``: run a batcher from the command line.

The same flags as ``turnout batcher``; handy where the control plane's CLI is
not installed (benchmarks start batchers this way).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from ._policy import BatchingPolicy, HttpPolicySource
from ._server import BatcherConfig, run_batcher

__all__ = ["build_config", "main"]


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def build_config(
    argv: list[str] | None = None,
    *,
    api_key: str | None = None,
    otlp_endpoint: str | None = None,
    trace_sampling: float = 1.0,
    prog: str = "python -m filters.batcher",
) -> BatcherConfig:
    """Parse command-line flags into a ``BatcherConfig`` (exits 2 on bad flags).

    ``api_key`` authenticates the policy polls to the control plane;
    ``otlp_endpoint`` and ``trace_sampling`` are the tracing defaults that
    ``--otlp-endpoint`` and ``--trace-sampling`` override.
    """
    defaults = BatchingPolicy()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--upstream", required=True, help="model server base URL")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 9101))
    parser.add_argument("--max-in-flight", type=int, default=1)
    parser.add_argument(
        "--stage-ms",
        type=float,
        default=5.0,
        help="send one more batch this long before a slot frees up (0: never)",
    )
    parser.add_argument("--disabled", action="store_true", help="start in pass-through mode")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--max-queue-delay-ms", type=float, default=defaults.max_queue_delay_ms)
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue)
    parser.add_argument("--slo-ms", type=float, default=defaults.slo_ms)
    parser.add_argument("--control-plane", help="admin API URL to poll for the policy")
    parser.add_argument("--model", help="model name (with --control-plane; labels /metrics)")
    parser.add_argument(
        "--model-version", help="version name (with --control-plane; labels /metrics)"
    )
    parser.add_argument(
        "--otlp-endpoint",
        type=_host_port,
        default=None,
        help="HOST:PORT of an OTLP/gRPC collector to send traces to",
    )
    parser.add_argument(
        "--trace-sampling",
        type=float,
        default=trace_sampling,
        help="percent (0 to 100) of requests without a traceparent that start a trace",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.trace_sampling <= 100:
        parser.error("--trace-sampling is a percent: give a number from 0 to 100")
    if args.otlp_endpoint is not None:
        otlp_endpoint = "{}:{}".format(*args.otlp_endpoint)
    policy = BatchingPolicy(
        enabled=not args.disabled,
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue=args.max_queue,
        slo_ms=args.slo_ms,
    )
    source = None
    if args.control_plane:
        if not (args.model and args.model_version):
            parser.error("--control-plane needs --model and --model-version")
        source = HttpPolicySource(
            args.control_plane,
            args.model,
            args.model_version,
            api_key=api_key,
        )
    host, port = args.listen
    return BatcherConfig(
        upstream=args.upstream,
        host=host,
        port=port,
        policy=policy,
        policy_source=source,
        max_in_flight=args.max_in_flight,
        stage_ms=args.stage_ms,
        otlp_endpoint=otlp_endpoint,
        trace_sampling=args.trace_sampling,
        model=args.model or "",
        version=args.model_version or "",
    )


def main(argv: list[str] | None = None) -> None:
    """Run a batcher until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # This entry point has no settings object: the key and the tracing defaults come
    # from the environment, under the control plane's names.
    config = build_config(
        argv,
        api_key=os.environ.get("TURNOUT_API_KEY"),
        otlp_endpoint=os.environ.get("TURNOUT_OTLP_ENDPOINT") or None,
        trace_sampling=float(os.environ.get("TURNOUT_TRACE_SAMPLING", "1.0")),
    )
    asyncio.run(run_batcher(config))


if __name__ == "__main__":
    main()
