"""The wire between the router and its workers: typed messages, the msgpack codec and the socket helper."""

from protocol.codec import ProtocolError, decode, encode
from protocol.messages import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "decode", "encode"]
