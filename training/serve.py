"""``python -m training.serve``: a router artifact behind an OpenAI-compatible HTTP endpoint.

The service is :mod:`training.serving.service`; this is its command line.
Everything is checked before the port opens (the artifact, every model's
backend and prices, the budget, the key variables), and a problem ends the
command with a one-line ``error:`` and exit code 2. Needs the ``serve``
extra (``pip install 'cascade-router[serve]'``). SIGTERM or Ctrl-C stops
accepting connections and lets the requests in flight finish (up to
``--graceful-timeout`` seconds) before the process exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import BAD_INPUT, fail, non_negative_int, parse_or_exit_code, positive_int

__all__ = ["main"]

log = logging.getLogger("training.serve")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a router artifact as an OpenAI-compatible endpoint: POST /v1/chat/completions runs the "
                    "cascade (decide, call the model's upstream, feed back its answer and cost, ..., select) and "
                    "answers with the selected text; POST /v1/route gives the decision only; GET /metrics is "
                    "Prometheus. backends.toml names one OpenAI-compatible upstream per model of the artifact "
                    "(see the README).")
    parser.add_argument("--artifact", type=Path, required=True, help="router artifact from training.fit "
                        "(its manifest beside it); it is a pickle: serve only artifacts you trust")
    parser.add_argument("--backends", type=Path, required=True, help="backends.toml: one [models.\"NAME\"] table "
                        "per model (base_url, model, optional api_key_env, price_in, price_out, timeout_s, "
                        "max_concurrency)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; loopback unless you say "
                        "otherwise (use --api-key-env when it is not)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--budget", type=float, default=None, help="mean cost per query (USD) that model "
                        "'router' serves: the largest fitted budget not above it; default the largest fitted "
                        "budget ('router@B' in a request picks another)")
    parser.add_argument("--pace", action="store_true", help="pace λ to --budget from the realised spend, one "
                        "controller shared by all requests to model 'router'")
    parser.add_argument("--api-key-env", metavar="NAME", default=None, help="environment variable holding the "
                        "key callers must send as 'Authorization: Bearer <key>'; default: no key needed")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20,
                        help="larger request bodies get 413")
    parser.add_argument("--max-prompt-chars", type=positive_int, default=100_000,
                        help="most characters the messages of one request may hold together (400 above)")
    parser.add_argument("--max-client-concurrency", type=positive_int, default=32,
                        help="requests one client address may have in flight (429 above)")
    parser.add_argument("--decision-threads", type=positive_int, default=2,
                        help="threads running the decision steps too long for the event loop")
    parser.add_argument("--inline-decision-chars", type=non_negative_int, default=32_000,
                        help="a decision step reading at most this many new characters (prompt, or the newest "
                             "response) runs on the event loop, a longer one on a decision thread; 0: all on threads")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds requests in flight may take to finish after SIGTERM or Ctrl-C")
    parser.add_argument("--verify-key-env", default=None, metavar="NAME",
                        help="refuse, before unpickling it, an artifact that is unsigned or not signed with the key "
                             "in environment variable NAME (the one training.fit --sign-key-env signed it with); "
                             "default: load it unverified, with a warning")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


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
    from .cli import key_from_env
    from .serving.backends import load_backends
    from .serving.router import load_router

    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {args.api_key_env} (--api-key-env) is not set or empty")
    if not args.artifact.exists():
        raise FileNotFoundError(f"--artifact {args.artifact} does not exist; train one with python -m training.fit")
    router = load_router(args.artifact, warm_up=False, key=key_from_env("--verify-key-env", args.verify_key_env))
    backends = load_backends(args.backends, router.models_, router.estimator.token_prices)
    config = ServiceConfig(budget=args.budget, pace=args.pace, api_key=api_key, max_body_bytes=args.max_body_bytes,
                           max_prompt_chars=args.max_prompt_chars,
                           max_client_concurrency=args.max_client_concurrency,
                           decision_threads=args.decision_threads,
                           inline_decision_chars=args.inline_decision_chars)
    app = create_app(router, backends, config)
    router.warm_up()
    return app, _listen(args.host, args.port), config


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
        app, listening, config = _build(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return fail(str(error), code=BAD_INPUT)
    import uvicorn

    host, port = listening.getsockname()[:2]
    if config.api_key is None and not ipaddress.ip_address(host).is_loopback:
        log.warning("listening on %s without --api-key-env: anyone who reaches this address can spend on your "
                    "upstreams", host)
    print(f"serving {args.artifact} on http://{host}:{port}/v1 (model 'router'; Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=args.graceful_timeout))
    with listening:
        server.run(sockets=[listening])
    return 0


if __name__ == "__main__":
    sys.exit(main())
