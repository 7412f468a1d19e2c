"""`gpupool serve`: the one place the router's command line is parsed into a ServeConfig."""

from __future__ import annotations

import argparse
import sys

from router.config import ATTENTION_BACKENDS, DTYPES, LOG_LEVELS, ServeConfig, resolve_devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpupool", description="An OpenAI-compatible LLM server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the router and one worker per device")
    add_serve_arguments(serve)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServeConfig()
    add = parser.add_argument
    add("--model", default=defaults.model, help="DIR, builtin or sim:STEP_MS (default: %(default)s)")
    add("--devices", default="auto", help="auto, cpu, cpu,cpu or cuda:0,cuda:1: one worker per entry")
    add("--host", default=defaults.host)
    add("--port", type=int, default=defaults.port)
    add("--dtype", choices=DTYPES, default=defaults.dtype)
    add("--attention", choices=ATTENTION_BACKENDS, default=defaults.attention,
        help="decode attention on CPU: native (a C loop over the cache, built at start-up), compiled (torch.compile), "
             "eager (gather + matmul); auto: native, else compiled")
    add("--served-model-name", default=None, help="the model name clients use (default: the worker's)")
    add("--api-key", action="append", default=[], help="require Authorization: Bearer KEY on /v1/*; repeatable")
    add("--max-queue", type=int, default=defaults.max_queue, help="requests admitted but not yet running")
    add("--max-running-per-worker", type=int, default=defaults.max_running_per_worker)
    add("--max-num-batched-tokens", type=int, default=defaults.max_batched_tokens,
        help="tokens one worker step computes, prompt chunks and decodes together")
    add("--max-prefill-tokens-while-decoding", type=int, default=None,
        help="prompt tokens a step that also decodes may take (default on CPU: as many as cost two decode steps, "
             "timed at start-up; no cap on GPU; lifted while more requests wait than run)")
    add("--request-timeout", type=float, default=defaults.request_timeout, help="seconds, admission to last token")
    add("--first-token-timeout", type=float, default=defaults.first_token_timeout,
        help="seconds, admission to first token")
    add("--shutdown-timeout", type=float, default=defaults.shutdown_timeout,
        help="seconds in-flight requests get to finish after SIGTERM")
    add("--log-level", choices=LOG_LEVELS, default=defaults.log_level)
    add("--worker-threads", type=int, default=None,
        help="torch threads per worker (default: at most a fair share of the cores, the fewest that the model's "
        "decode step scales to, timed at start-up)")
    add("--startup-timeout", type=float, default=defaults.startup_timeout, help=argparse.SUPPRESS)
    add("--heartbeat-timeout", type=float, default=defaults.heartbeat_timeout, help=argparse.SUPPRESS)
    add("--stall-timeout", type=float, default=defaults.stall_timeout, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        model=args.model,
        devices=resolve_devices(args.devices),
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        attention=args.attention,
        served_model_name=args.served_model_name,
        api_keys=tuple(args.api_key),
        max_queue=args.max_queue,
        max_running_per_worker=args.max_running_per_worker,
        max_batched_tokens=args.max_num_batched_tokens,
        max_prefill_tokens_while_decoding=args.max_prefill_tokens_while_decoding,
        request_timeout=args.request_timeout,
        first_token_timeout=args.first_token_timeout,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
        worker_threads_override=args.worker_threads,
        startup_timeout=args.startup_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        stall_timeout=args.stall_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from router.serve import serve  # aiohttp and zmq load only once the command line is known to be good

    return serve(config)
