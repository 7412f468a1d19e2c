"""The one helper that makes every ZeroMQ socket, and the run directory that holds the default ipc:// addresses.

Topology (the shape vLLM V1 uses): the router binds a ROUTER for requests, and each worker connects a DEALER whose
identity names the worker; the router binds a PULL for outputs, and each worker connects a PUSH. Works with both
`zmq.Context` (the worker's blocking loop) and `zmq.asyncio.Context` (the router's event loop).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import zmq

from protocol.codec import DEFAULT_MAX_FRAME_BYTES

DEFAULT_HWM = 100_000
DEFAULT_LINGER_MS = 1000


@dataclass(frozen=True)
class Addresses:
    """Where the router's two sockets live; workers connect to both."""

    requests: str
    outputs: str

    def __post_init__(self) -> None:
        for address in (self.requests, self.outputs):
            if not address.startswith(("ipc://", "tcp://", "inproc://")):
                raise ValueError(f"unsupported ZeroMQ address {address!r}: use ipc://, tcp:// or inproc://")

    def as_arg(self) -> str:
        return f"{self.requests},{self.outputs}"

    @classmethod
    def from_arg(cls, value: str) -> "Addresses":
        parts = value.split(",")
        if len(parts) != 2:
            raise ValueError(f"expected REQUESTS_ADDRESS,OUTPUTS_ADDRESS, got {value!r}")
        return cls(parts[0].strip(), parts[1].strip())


class RunDirectory:
    """A private (mode 0700) directory for the ipc:// sockets, removed by `remove()`."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="gpupool-")
        os.chmod(self.path, 0o700)

    def addresses(self) -> Addresses:
        return Addresses(f"ipc://{self.path}/requests.sock", f"ipc://{self.path}/outputs.sock")

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def make_socket(
    ctx: zmq.Context,
    kind: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
    identity: bytes | None = None,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = DEFAULT_LINGER_MS,
    max_message_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    router_mandatory: bool = False,
) -> zmq.Socket:
    """Create a socket with every option explicit. Exactly one of `bind` and `connect` is given."""
    if (bind is None) == (connect is None):
        raise ValueError("give exactly one of bind= and connect=")
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if router_mandatory:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if bind is not None:
        sock.bind(bind)
    else:
        sock.connect(connect)
    return sock


def worker_identity(worker_id: int, epoch: int) -> bytes:
    """A restarted worker gets a new epoch, so frames meant for its dead predecessor are never routed to it."""
    return f"w{worker_id}.{epoch}".encode()
