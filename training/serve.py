"""``python -m training.serve``: a router artifact behind an OpenAI-compatible HTTP endpoint.

The service is :mod:`training.serving.service`; this is its command line.
Everything is checked before the port opens (the artifact, every model's
backend and prices, the budget, the key variables), and a problem ends the
command with a one-line ``error:`` and exit code 2. Needs the ``serve``
extra (``pip install 'cascade-router[serve]'``). SIGTERM or Ctrl-C stops
accepting connections and lets the requests in flight finish (up to
``--graceful-timeout`` seconds) before the process exits.

Secrets (issue 30): the callers' key, the (deprecated) HMAC artifact key
and every upstream key are read once at start-up and then removed from
``os.environ``, so that nothing later started or inspected in the process
finds them there; ``backends.toml`` may only name upstream keys that start
with ``--upstream-key-prefix``. The edge limits are
:mod:`training.serving.edge`'s.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import (
    BAD_INPUT,
    HelpFormatter,
    add_artifact_argument,
    add_budget_arguments,
    add_log_arguments,
    add_quiet_argument,
    add_shadow_arguments,
    add_verify_arguments,
    exit_status,
    fail,
    non_negative_int,
    one_line_warnings,
    parse_or_exit_code,
    positive_int,
    verification_key,
)

__all__ = ["EXIT_STATUS", "build_parser", "main"]

#: Exit codes of :func:`main`, listed in ``--help``.
EXIT_STATUS = exit_status("bad argument, artifact or backends.toml, a model without a backend or prices, an unset key "
                          "variable, a port in use: all checked before the port opens",
                          "if the server stops on an error; 0 also after SIGTERM or Ctrl-C once the requests in "
                          "flight have finished")

log = logging.getLogger("training.serve")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.serve`` (docs and tests read its flags).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.serve", formatter_class=HelpFormatter, epilog=EXIT_STATUS,
        description="Serve a router artifact as an OpenAI-compatible endpoint: POST /v1/chat/completions runs the "
                    "cascade (decide, call the model's upstream, feed back its answer and cost, ..., select) and "
                    "answers with the selected text; POST /v1/route gives the decision only; GET /metrics is "
                    "Prometheus. backends.toml names one OpenAI-compatible upstream per model of the artifact "
                    "(see the README).")
    add_artifact_argument(parser)
    parser.add_argument("--backends", type=Path, required=True, metavar="PATH",
                        help="backends.toml: one [models.\"NAME\"] table "
                        "per model (base_url, model, optional api_key_env, price_in, price_out, timeout_s, "
                        "connect_timeout_s, max_concurrency)")
    parser.add_argument("--backends-sha256", metavar="HEX", default=None, help="refuse to start unless "
                        "backends.toml has this SHA-256 (sha256sum backends.toml), so that whoever can write the "
                        "file cannot point an upstream (and its key) elsewhere unnoticed")
    parser.add_argument("--upstream-key-prefix", default="UPSTREAM_", metavar="PREFIX",
                        help="every api_key_env in backends.toml must start with PREFIX (and may not be the "
                             "service's own key variables), so the file cannot send another secret to an upstream")
    parser.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                        help="address to listen on; loopback unless you say "
                        "otherwise (use --api-key-env when it is not)")
    parser.add_argument("--port", type=non_negative_int, default=8000, metavar="PORT",
                        help="port to listen on (0: any free port)")
    add_budget_arguments(parser, fitting=False, latency=False)  # model 'router'; 'router@B' in a request picks another
    parser.add_argument("--pace", action="store_true", help="pace λ to --budget from the realised spend, one "
                        "controller shared by all requests to model 'router'")
    parser.add_argument("--api-key-env", metavar="NAME", default=None, help="environment variable holding the "
                        "key (at least 32 characters) callers must send as 'Authorization: Bearer <key>'; default: "
                        "no key needed")
    parser.add_argument("--max-body-bytes", type=positive_int, metavar="BYTES", default=1 << 20,
                        help="larger request bodies get 413")
    parser.add_argument("--max-prompt-chars", type=positive_int, metavar="CHARS", default=100_000,
                        help="most characters the messages of one request may hold together (400 above)")
    parser.add_argument("--max-messages", type=positive_int, metavar="N", default=256,
                        help="most messages one request may hold (400 above)")
    parser.add_argument("--max-client-concurrency", type=positive_int, metavar="N", default=32,
                        help="requests one client address may have in flight (429 above)")
    parser.add_argument("--request-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="deadline of one request's whole cascade: each upstream call gets what is left of it "
                             "(and at most its timeout_s); the caller gets a 502 once no model answered in time")
    parser.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds a request body may take to arrive after its headers (the connection is "
                             "closed after)")
    parser.add_argument("--max-reply-bytes", type=positive_int, metavar="BYTES", default=8 << 20,
                        help="largest upstream reply read; a larger one fails that model for the query")
    parser.add_argument("--max-header-bytes", type=positive_int, metavar="BYTES", default=32 << 10,
                        help="request line and headers of one request (431 and the connection closed above)")
    parser.add_argument("--max-headers", type=positive_int, metavar="N", default=100,
                        help="header fields of one request")
    parser.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds a request's headers may take to arrive, from the connection opening or the "
                             "previous response; the connection is closed after")
    parser.add_argument("--keep-alive-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="seconds an idle keep-alive connection is kept")
    parser.add_argument("--max-connections", type=positive_int, metavar="N", default=1000,
                        help="open connections; a new one beyond closes the one that has waited longest for its "
                             "request headers")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated host names a request's Host header may give (421 otherwise); "
                             "default: the loopback names for a loopback --host, any name otherwise")
    parser.add_argument("--trusted-proxies", default="", metavar="ADDRESSES",
                        help="comma-separated proxy addresses whose X-Forwarded-For names the client (for "
                             "--max-client-concurrency); default: none, the peer address is the client")
    parser.add_argument("--decision-threads", type=positive_int, metavar="N", default=2,
                        help="threads running the decision steps too long for the event loop")
    parser.add_argument("--inline-decision-chars", type=non_negative_int, metavar="CHARS", default=32_000,
                        help="a decision step reading at most this many new characters (prompt, or the newest "
                             "response) runs on the event loop, a longer one on a decision thread; 0: all on threads")
    parser.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds requests in flight may take to finish after SIGTERM or Ctrl-C")
    add_verify_arguments(parser)
    add_log_arguments(parser)
    add_shadow_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe log records written to stderr (requests are not logged one by one)")
    add_quiet_argument(parser, "log warnings and errors only (as --log-level warning)")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quiet:
        args.log_level = "warning"
    return args


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a port in use is a one-line error (uvicorn would exit itself)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); pick another --host or "
                         "--port") from None


def _build(args: argparse.Namespace):
    """The app and its socket, or ``ValueError``/``FileNotFoundError`` naming what to fix."""
    try:
        import uvicorn  # noqa: F401  (checked here so the message names the extra)

        from .serving.service import ServiceConfig, create_app
    except ImportError as error:
        raise ValueError(f"the service needs the serve extra ({error.name} is missing): "
                         "pip install 'cascade-router[serve]'") from None
    from .router import load_router
    from .serving.backends import load_backends
    from .serving.edge import EdgeLimits, raise_descriptor_limit
    from .serving.traffic import log_config

    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {args.api_key_env} (--api-key-env) is not set or empty")
    if not args.artifact.exists():
        raise FileNotFoundError(f"--artifact {args.artifact} does not exist; train one with python -m training.fit")
    for flag in ("request_timeout", "body_timeout", "header_timeout", "keep_alive_timeout"):
        if not 0 < getattr(args, flag) < float("inf"):
            raise ValueError(f"--{flag.replace('_', '-')} must be a number of seconds > 0, got {getattr(args, flag)}")
    if args.shadow_budget is not None and args.shadow is None:
        raise ValueError("--shadow-budget sets the shadow router's budget; add --shadow ARTIFACT or drop it")
    key = verification_key(args)
    router = load_router(args.artifact, warm_up=False, key=key)
    shadow = None
    if args.shadow is not None:  # verified as the served artifact is
        if not args.shadow.exists():
            raise FileNotFoundError(f"--shadow {args.shadow} does not exist; give a router artifact from "
                                    "python -m training.fit")
        shadow = load_router(args.shadow, warm_up=False, key=key)
    own = [name for name in (args.api_key_env, args.verify_key_env) if name is not None]
    backends = load_backends(args.backends, router.models_, router.estimator.token_prices,
                             key_prefix=args.upstream_key_prefix, reserved=own,
                             expected_sha256=args.backends_sha256)
    for name in own + [b.api_key_env for b in backends.values() if b.api_key_env]:  # read: nothing later needs them
        os.environ.pop(name, None)
    try:
        host = ipaddress.ip_address(args.host)
        loopback = host.is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    allowed: tuple[str, ...] | None
    if args.allowed_hosts is not None:
        allowed = tuple(name.strip() for name in args.allowed_hosts.split(",") if name.strip())
    else:
        allowed = ("127.0.0.1", "localhost", "::1") if loopback else None
    config = ServiceConfig(budget=args.budget, pace=args.pace, api_key=api_key, max_body_bytes=args.max_body_bytes,
                           max_prompt_chars=args.max_prompt_chars, max_messages=args.max_messages,
                           max_client_concurrency=args.max_client_concurrency,
                           decision_threads=args.decision_threads,
                           inline_decision_chars=args.inline_decision_chars,
                           request_timeout_s=args.request_timeout,
                           allowed_hosts=allowed, max_reply_bytes=args.max_reply_bytes,
                           log=log_config(args), explore=args.explore,
                           explore_models=args.explore_models, baseline_model=args.baseline_model,
                           shadow_budget=args.shadow_budget)
    limits = EdgeLimits(max_header_bytes=args.max_header_bytes, max_headers=args.max_headers,
                        header_timeout_s=args.header_timeout, keep_alive_s=args.keep_alive_timeout,
                        body_timeout_s=args.body_timeout,
                        max_connections=args.max_connections,
                        trusted_proxies=tuple(a.strip() for a in args.trusted_proxies.split(",") if a.strip()))
    # a connection per caller, two per upstream call in flight, and room for files and the loop
    raise_descriptor_limit(limits.max_connections + sum(2 * b.max_concurrency for b in backends.values()) + 256)
    app = create_app(router, backends, config, shadow=shadow)
    router.warm_up()
    if shadow is not None:
        shadow.warm_up()
    return app, _listen(args.host, args.port), config, limits



#: Net new objects between two young collections (Python's default 700).
YOUNG_GC_OBJECTS = 10_000


def _settle_heap() -> None:
    """Put what start-up made out of the cyclic collector's reach, and run its young collections less often.

    The router and the libraries (about 230,000 objects) live as long as
    the process, yet every full collection walked them all: 50–160 ms with
    no request moving, twice in 3,200 requests under the load test. At
    Python's default threshold (700 net new objects) the in-flight requests'
    own objects set off a young collection every few requests, each
    scanning them and promoting the survivors towards the next full one;
    their objects die by reference counting, and at 10,000 none ran in
    3,200 requests (``docs/decisions.md`` item 165). What start-up left as
    garbage is collected first.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_OBJECTS, *gc.get_threshold()[1:])


@one_line_warnings()
def main(argv: Sequence[str] | None = None) -> int:
    """Run the service until SIGTERM or Ctrl-C.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 after a clean shutdown, 2 on bad input (one ``error:`` line on stderr).
    """
    args = parse_or_exit_code(_parse, argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app, listening, config, limits = _build(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return fail(str(error), code=BAD_INPUT)
    import uvicorn

    from .serving.edge import uvicorn_config

    host, port = listening.getsockname()[:2]
    if config.api_key is None and not ipaddress.ip_address(host).is_loopback:
        log.warning("listening on %s without --api-key-env: anyone who reaches this address can spend on your "
                    "upstreams", host)
    print(f"serving {args.artifact} on http://{host}:{port}/v1 (model 'router'; Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    server = uvicorn.Server(uvicorn_config(app, limits, log_level=args.log_level, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=args.graceful_timeout))
    _settle_heap()
    with listening:
        server.run(sockets=[listening])
    return 0


if __name__ == "__main__":
    sys.exit(main())
