"""The wire: every message round-trips, and anything malformed is a ProtocolError (never another exception)."""

import dataclasses
import os
import stat
import typing

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import PROTOCOL_VERSION, ProtocolError, decode, encode
from protocol import messages as m
from protocol.sockets import Addresses, RunDirectory, make_socket

ALL_MESSAGES = m.TO_WORKER + m.TO_ROUTER

ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False)


def strategy_for(annotation) -> st.SearchStrategy:
    """A hypothesis strategy for any wire annotation, derived from the dataclasses themselves."""
    basic = {int: ints, float: floats, str: st.text(max_size=20), bool: st.booleans(), type(None): st.none()}
    if annotation in basic:
        return basic[annotation]
    origin = typing.get_origin(annotation)
    if origin is list:
        return st.lists(strategy_for(typing.get_args(annotation)[0]), max_size=4)
    if origin is not None:  # a union
        return st.one_of([strategy_for(a) for a in typing.get_args(annotation)])
    hints = typing.get_type_hints(annotation)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(annotation)}
    return st.builds(annotation, **fields)


any_message = st.one_of([strategy_for(cls) for cls in ALL_MESSAGES])


@settings(max_examples=300, deadline=None)
@given(any_message)
def test_every_message_round_trips(message):
    assert decode(encode(message)) == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_are_rejected_or_decode_to_a_message(data):
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert isinstance(message, ALL_MESSAGES)


json_like = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([c.__name__ for c in ALL_MESSAGES]), st.lists(json_like, max_size=12))
def test_wrong_field_types_are_protocol_errors(name, fields):
    frame = msgpack.packb([PROTOCOL_VERSION, name, fields], use_bin_type=True)
    try:
        message = decode(frame)
    except ProtocolError:
        return
    # When random fields happen to fit, they must really be of the declared types.
    assert decode(encode(message)) == message


def test_wrong_version_unknown_type_and_oversize():
    good = encode(m.Abort(["a"]))
    with pytest.raises(ProtocolError, match="version"):
        decode(msgpack.packb([PROTOCOL_VERSION + 1, "Abort", [["a"]]]))
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode(msgpack.packb([PROTOCOL_VERSION, "Pickle", []]))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(good, max_bytes=len(good) - 1)
    with pytest.raises(ProtocolError, match="array of int"):
        decode(msgpack.packb([PROTOCOL_VERSION, "GenerateRequest", ["r", list(dataclasses.astuple(m.SamplingParams())),
                                                                     None, [1, "x"], None, True, None]]))
    with pytest.raises(ProtocolError):
        decode(msgpack.packb([PROTOCOL_VERSION, "Abort", [[True]]]))  # bool is not str


def test_expect_rejects_messages_meant_for_the_other_side():
    frame = encode(m.Goodbye(0, 0))
    with pytest.raises(ProtocolError, match="not expected"):
        decode(frame, expect=m.TO_WORKER)


def test_a_whole_step_is_one_small_frame():
    deltas = [m.SequenceDelta(f"req-{i}", 0, [i], "tok", None, 10, i) for i in range(64)]
    frame = encode(m.StepOutputs(0, 0, 1, deltas))
    assert len(frame) < 64 * 40
    assert decode(frame).deltas == deltas


def test_run_directory_is_private_and_removed():
    run_dir = RunDirectory()
    assert stat.S_IMODE(os.stat(run_dir.path).st_mode) == 0o700
    addresses = run_dir.addresses()
    assert addresses.requests.startswith("ipc://" + run_dir.path)
    run_dir.remove()
    assert not os.path.exists(run_dir.path)


def test_addresses_validate():
    assert Addresses.from_arg("tcp://127.0.0.1:5000,tcp://127.0.0.1:5001").outputs == "tcp://127.0.0.1:5001"
    with pytest.raises(ValueError):
        Addresses.from_arg("http://x,tcp://y")
    with pytest.raises(ValueError):
        Addresses.from_arg("tcp://only-one")


def test_make_socket_sets_options_and_talks_over_tcp():
    ctx = zmq.Context()
    pull = make_socket(ctx, zmq.PULL, bind="tcp://127.0.0.1:*", hwm=10, linger_ms=0, max_message_bytes=1000)
    push = make_socket(ctx, zmq.PUSH, connect=pull.getsockopt(zmq.LAST_ENDPOINT).decode(), linger_ms=0)
    try:
        assert pull.getsockopt(zmq.RCVHWM) == 10 and pull.getsockopt(zmq.MAXMSGSIZE) == 1000
        push.send(encode(m.Drain()))
        assert pull.poll(5000)
        assert decode(pull.recv()) == m.Drain()
        with pytest.raises(ValueError):
            make_socket(ctx, zmq.PUSH)
    finally:
        push.close()
        pull.close()
        ctx.term()
