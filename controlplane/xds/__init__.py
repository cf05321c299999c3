"""xDS: translation of desired state to Envoy resources, snapshots, cache and servers.

Modules, from pure to effectful:

- ``resources``: type URLs and small protobuf helpers.
- ``translate``: desired state -> Envoy resources (a pure function).
- ``snapshot``: an immutable, versioned, consistency-checked set of resources.
- ``cache``: holds the current snapshot and wakes watchers (no gRPC here).
- ``sotw``: the state-of-the-world ADS protocol for one stream (no gRPC here).
- ``status``: what each connected proxy was sent and acknowledged.
- ``server``: the grpc.aio servicer that composes the above.
"""
