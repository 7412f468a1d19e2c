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
    if annotation is m.StepOutputs:  # its columns must be of one length, so build it from rows
        rows = st.lists(strategy_for(m.SequenceDelta), max_size=4)
        return st.builds(m.StepOutputs.from_deltas, ints, ints, ints, rows)
    fields = {name: strategy_for(hint) for name, hint in typing.get_type_hints(annotation).items()}
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
    frame = encode(m.StepOutputs.from_deltas(0, 0, 1, deltas))
    assert len(frame) < 64 * 40
    assert list(decode(frame).deltas()) == deltas


def test_step_outputs_are_columns_that_round_trip_to_the_same_rows():
    logprobs = [m.TokenLogprob(7, "a", -0.25, [m.TopLogprob(7, "a", -0.25), m.TopLogprob(8, "b", -2.0)])]
    deltas = [
        m.SequenceDelta("r1", 0, [7], "a", None, 5, 1, 2, logprobs),
        m.SequenceDelta("r1", 1, [9, 10], "xy", "stop", 5, 2, 2, None, 42),
        m.SequenceDelta("r2", 0, [], "", "stop", 3, 4, 0, [], "END"),
    ]
    message = m.StepOutputs.from_deltas(1, 2, 3, deltas)
    assert message.request_ids == ["r1", "r1", "r2"] and message.token_ids == [[7], [9, 10], []]
    assert message.finish_reasons == [None, "stop", "stop"] and message.stop_reasons == [None, 42, "END"]
    decoded = decode(encode(message))
    assert decoded == message
    assert list(decoded.deltas()) == deltas
    assert m.StepOutputs.from_deltas(1, 2, 3, []) == m.StepOutputs(1, 2, 3, *[[]] * 10)


def step_frame_with(column: str, value) -> bytes:
    """A valid two-row StepOutputs frame with one column replaced."""
    deltas = [m.SequenceDelta("r1", 0, [1], "a", None, 3, 1), m.SequenceDelta("r2", 0, [2], "b", "length", 3, 1)]
    fields = msgpack.unpackb(encode(m.StepOutputs.from_deltas(0, 0, 1, deltas)))[2]
    fields[[f.name for f in dataclasses.fields(m.StepOutputs)].index(column)] = value
    return msgpack.packb([PROTOCOL_VERSION, "StepOutputs", fields])


@pytest.mark.parametrize("column, value, error", [
    ("indexes", [0], "differ in length"),
    ("logprobs", [None, None, None], "differ in length"),
    ("indexes", [0, True], "array of int"),
    ("prompt_tokens", [3, False], "array of int"),
    ("token_ids", [[1], [2.0]], "arrays of int"),
    ("token_ids", [[1], 2], "array of arrays"),
    ("texts", "ab", "array"),
    ("finish_reasons", None, "array"),
    ("stop_reasons", [None, 1.5], "array of int | null | str"),
])
def test_malformed_step_columns_are_protocol_errors(column, value, error):
    with pytest.raises(ProtocolError, match=error):
        decode(step_frame_with(column, value))


def test_step_outputs_reject_columns_of_unequal_length():
    with pytest.raises(ValueError, match="differ in length"):
        m.StepOutputs(0, 0, 1, ["r1"], [0], [[1]], ["a"], [None], [3], [1], [0], [None], [])


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
