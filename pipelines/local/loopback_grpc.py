"""Beam's own Python gRPC servers on loopback: the Direct runner's fn-API servers, the logging server it opens
for each worker process, the LOOPBACK worker pool, and the local clusters' worker pool (workers.py).

Beam opens them with `add_insecure_port('[::]:N')`, on every interface, whatever the flags say, and none
has authentication: whoever reaches the control or data port is sent the job's bundles (photos, face
vectors) and can send work back. No option binds them elsewhere, so the modules that open them
(FnApiRunner's worker_handlers, local_job_service, worker_pool_main) see a `grpc` whose servers bind `localhost` instead:
127.0.0.1 and ::1 on one port, which is what their workers dial (`localhost:N`). The local clusters'
Java servers get the same from runner/LoopbackServers.java.
"""
from __future__ import annotations

import grpc
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import worker_pool_main

WILDCARD = "[::]:"
PATCHED = (worker_handlers, local_job_service, worker_pool_main)


class LoopbackServer:
    """A grpc.Server whose wildcard ports are opened on `host`, a loopback name or address."""

    def __init__(self, server, host: str):
        self._server, self._host = server, host

    def __getattr__(self, name):
        return getattr(self._server, name)

    def add_insecure_port(self, address: str) -> int:
        if address.startswith(WILDCARD):
            address = f"{self._host}:{address[len(WILDCARD):]}"
        return self._server.add_insecure_port(address)


class LoopbackGrpc:
    """The grpc module, but for `server()`."""

    def __init__(self, host: str):
        self.host = host

    def __getattr__(self, name):
        return getattr(grpc, name)

    def server(self, *args, **kwargs) -> LoopbackServer:
        return LoopbackServer(grpc.server(*args, **kwargs), self.host)


def install(host: str = "localhost") -> None:
    """From here on, in this process, Beam's fn-API servers and worker pools listen on loopback only: on `host`
    (`localhost`: 127.0.0.1 and ::1; the clusters' worker pools take 127.0.0.1, which their Java side dials)."""
    for module in PATCHED:
        if not (isinstance(module.grpc, LoopbackGrpc) and module.grpc.host == host):
            module.grpc = LoopbackGrpc(host)
