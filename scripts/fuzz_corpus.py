"""Malformed frames for scripts/fuzz_frames.py: each generator yields (kind, frames, bad) where `frames` is one
ZeroMQ message (a list of parts) and `bad` is how many of its parts the receiver must count as bad frames."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator

import msgpack

from protocol.codec import encode
from protocol.messages import (PROTOCOL_VERSION, Abort, ChatMessage, GenerateRequest, Goodbye, Handshake,
                               RequestError, SamplingParams, SequenceDelta, StepOutputs, WorkerStats)

HUGE_HEADERS = [  # msgpack headers that announce far more than the frame holds
    b"\xdd\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xd9\xff",
]
WRONG_VERSIONS = [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, -1, 2**64 - 1, str(PROTOCOL_VERSION),
                  float(PROTOCOL_VERSION), None, True, [PROTOCOL_VERSION], bytes([PROTOCOL_VERSION])]
ENVELOPE_START = bytes([0x93, PROTOCOL_VERSION])  # msgpack: an array of 3, then the version


def random_value(rng: random.Random, depth: int = 0):
    """Any msgpack value: scalars of every type, and nested arrays and maps."""
    choice = rng.randrange(12 if depth < 4 else 8)
    return [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-2**63, 2**64 - 1), lambda: rng.random() * 1e308,
        lambda: rng.choice([math.nan, math.inf, -math.inf, -0.0]), lambda: "".join(chr(rng.randrange(0x3000))
                                                                                   for _ in range(rng.randrange(20))),
        lambda: rng.randbytes(rng.randrange(20)), lambda: rng.randrange(300),
        lambda: [random_value(rng, depth + 1) for _ in range(rng.randrange(6))],
        lambda: {random_value(rng, 4) if rng.random() < 0.3 else str(i): random_value(rng, depth + 1)
                 for i in range(rng.randrange(4))},
        lambda: msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(8))),
        lambda: [PROTOCOL_VERSION, rng.choice(["StepOutputs", "WorkerStats", "GenerateRequest"]),
                 random_value(rng, depth + 1)],
    ][choice]()


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def mutate_fields(rng: random.Random, frame: bytes) -> bytes:
    """A valid frame with one field replaced by a random value, or a field dropped or added."""
    version, name, fields = msgpack.unpackb(frame, raw=False)
    fields = list(fields)
    action = rng.randrange(3)
    if action == 0 and fields:
        fields[rng.randrange(len(fields))] = random_value(rng)
    elif action == 1 and fields:
        fields.pop(rng.randrange(len(fields)))
    else:
        fields.append(random_value(rng))
    return pack([version, name, fields])


def bad_frames(rng: random.Random, samples: list[bytes], unexpected: list[bytes]) -> Iterator[tuple[str, list, int]]:
    """Endless malformed messages. `samples`: valid frames for this receiver (to corrupt); `unexpected`: valid
    frames of messages this receiver must not get."""
    while True:
        kind = rng.randrange(10)
        if kind == 0:
            yield "random bytes", [rng.randbytes(rng.choice([0, 1, 7, 64, 1024, 65536]))], 1
        elif kind == 1:
            yield "random msgpack", [pack(random_value(rng))], 1
        elif kind == 2:
            frame = rng.choice(samples)
            yield "truncated", [frame[:rng.randrange(len(frame))]], 1
        elif kind == 3:
            yield "huge length", [rng.choice([b"", ENVELOPE_START]) + rng.choice(HUGE_HEADERS) + rng.randbytes(8)], 1
        elif kind == 4:
            _, name, fields = msgpack.unpackb(rng.choice(samples), raw=False)
            yield "wrong version", [pack([rng.choice(WRONG_VERSIONS), name, fields])], 1
        elif kind == 5:
            yield "unknown type", [pack([PROTOCOL_VERSION, rng.choice(["Nope", "", 7, None, "stepoutputs"]), []])], 1
        elif kind == 6:
            yield "wrong field types", [_still_bad(rng, rng.choice(samples))], 1
        elif kind == 7:
            yield "wrong direction", [rng.choice(unexpected)], 1
        elif kind == 8:
            frame = rng.choice(samples)
            flipped = bytearray(frame)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            if decodes(bytes(flipped)):
                continue  # a flip that still makes a valid message is not a bad frame
            yield "bit flip", [bytes(flipped)], 1
        else:
            yield "deep nesting", [b"\x91" * rng.choice([100, 10_000, 100_000]) + b"\xc0"], 1


def _still_bad(rng: random.Random, frame: bytes) -> bytes:
    for _ in range(100):
        mutated = mutate_fields(rng, frame)
        if not decodes(mutated):
            return mutated
    return pack([PROTOCOL_VERSION, "StepOutputs", []])


def decodes(frame: bytes, expect: tuple[type, ...] | None = None) -> bool:
    from protocol.codec import ProtocolError, decode

    try:
        decode(frame, expect=expect)
    except ProtocolError:
        return False
    return True


def router_samples(worker_id: int, epoch: int) -> list[bytes]:
    delta = SequenceDelta("cmpl-x", 0, [1, 2], "ab", None, 3, 2, logprobs=None)
    return [encode(StepOutputs.from_deltas(worker_id, epoch, 1, [delta])),
            encode(WorkerStats(worker_id, epoch, 0, 0, 0, 1, 0.1, 1, 0)),
            encode(RequestError(worker_id, epoch, "cmpl-x", "x", "y", 400)), encode(Goodbye(worker_id, epoch))]


def worker_samples() -> list[bytes]:
    return [encode(GenerateRequest("fz", SamplingParams(max_tokens=4), prompt="hi")), encode(Abort(["fz"])),
            encode(GenerateRequest("fz", SamplingParams(n=2), messages=[ChatMessage("user", "hi")]))]


def unexpected_at_router() -> list[bytes]:
    """Valid messages that never travel to the router's output socket."""
    return [encode(GenerateRequest("fz", SamplingParams(), prompt="x")), encode(Abort(["fz"])),
            encode(Handshake(0, 0, 1, "cpu", "m", 8, 8, 1, False))]


def unexpected_at_worker() -> list[bytes]:
    """Valid messages that never travel to a worker."""
    return [encode(Handshake(0, 0, 1, "cpu", "m", 8, 8, 1, False)), encode(Goodbye(0, 0))] + router_samples(0, 0)


def absurd_requests(rng: random.Random, count: int) -> Iterator[GenerateRequest]:
    """Well-typed GenerateRequests with values no router would send: the worker must reject or run each, never die."""
    fields = {
        "max_tokens": [None, 0, -1, 1, 2**62], "min_tokens": [-5, 0, 2**40], "temperature": [-1.0, 0.0, math.nan, math.inf, 1e308],
        "top_p": [0.0, -1.0, math.nan, 2.0], "top_k": [None, 0, -7, 2**40], "presence_penalty": [math.nan, -1e308],
        "frequency_penalty": [math.inf], "repetition_penalty": [0.0, -1.0, math.nan, 1e308], "seed": [2**63 - 1, -2**63],
        "n": [0, -3, 1, 2, 64], "stop": [[""], ["a" * 10_000], []], "stop_token_ids": [[-1], [2**40], []],
        "logprobs": [-1, 0, 10**6], "ignore_eos": [True, False],
    }
    for i in range(count):
        chosen = {k: rng.choice(v) for k, v in fields.items() if rng.random() < 0.4}
        sampling = dataclasses.replace(SamplingParams(max_tokens=8), **chosen)
        prompt_kind = rng.randrange(5)
        kwargs = [{"prompt": rng.choice(["", "x", "\x00" * 10])},
                  {"prompt_token_ids": rng.choice([[], [-1], [2**40], [0] * 10])},
                  {"messages": rng.choice([[], [ChatMessage("nobody", "x")], [ChatMessage("user", "")]])},
                  {},
                  {"prompt": "x", "prompt_token_ids": [1]}][prompt_kind]
        deadline = rng.choice([None, 0.0, -1.0, math.nan, math.inf])
        yield GenerateRequest(f"absurd-{i}", sampling, deadline=deadline, **kwargs)
