"""``backends.toml``: which OpenAI-compatible upstream answers for each model of a router artifact.

One table per model, keyed by the artifact's model name::

    [models."gpt-4-1106-preview"]
    base_url = "https://upstream.example/v1"   # any OpenAI-compatible endpoint
    model = "gpt-4-1106-preview"                # the upstream's model id
    api_key_env = "UPSTREAM_KEY"                # optional: environment variable holding the key
    price_in = 10.0                             # optional: USD per 1M input tokens
    price_out = 30.0                            # optional: USD per 1M output tokens
    timeout_s = 30                              # optional: seconds one attempt may take
    connect_timeout_s = 3                       # optional: seconds to open the connection
    max_concurrency = 64                        # optional: calls in flight to this upstream
    logprobs = true                             # optional: it returns token log-probabilities when asked

Everything is checked when the service starts, so that a typo stops it
with one message instead of failing requests later: every model of the
artifact needs a backend and no backend may name a model the artifact does
not know; a model needs prices (here, or the ones the artifact's cost
estimator was fitted with) because the cost of a call is
``usage × prices``; an ``api_key_env`` must name a set variable. Keys are
read from the environment only, never from the file, and no message here
quotes one.

An ``api_key_env`` must start with the operator's prefix (``--upstream-key-prefix``,
default :data:`KEY_PREFIX`) and may not be one of the service's own secret
variables (the callers' key, the artifact key): whoever can write the
artifact's directory can usually write ``backends.toml`` beside it, and
without this rule ``api_key_env = "ROUTER_SIGNING_KEY"`` with a
``base_url`` of their own would send that secret to them as a bearer token
(issue 30).

Timeouts (issue 29): an attempt may take ``timeout_s`` (default
:data:`DEFAULT_TIMEOUT_S`), of which opening the connection at most
``connect_timeout_s`` (:data:`DEFAULT_CONNECT_TIMEOUT_S`). An attempt that
timed out is not retried: the next model is the caller's faster way to an
answer. The service's per-request deadline (``--request-timeout``) bounds
the whole cascade on top of these.

``logprobs = true`` says the upstream returns token log-probabilities when
a request asks for them (``"logprobs": true``, as OpenAI's API does). An
artifact whose estimator reads the ``mean_logprob`` post-hoc signal
(:data:`~training.serving.upstream.LOGPROB_SIGNAL`) needs it on every
backend; the service then asks each call for them and passes the answer's
mean token log-probability to the router (issue 28).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "KEY_PREFIX", "Backend", "load_backends",
           "parse_backends", "redact_url"]

_KEYS = {"base_url", "model", "api_key_env", "price_in", "price_out", "timeout_s", "connect_timeout_s",
         "max_concurrency", "logprobs"}

KEY_PREFIX = "UPSTREAM_"
"""Default prefix every ``api_key_env`` must start with."""

DEFAULT_TIMEOUT_S = 30.0
"""Seconds one upstream attempt may take by default: long enough for a long answer from a slow model, short
enough that an interactive caller reaches the next model instead of waiting a minute."""

DEFAULT_CONNECT_TIMEOUT_S = 3.0
"""Seconds to open a connection to an upstream by default: a reachable host answers in milliseconds."""


@dataclass(frozen=True)
class Backend:
    """One model's upstream.

    Attributes
    ----------
    name : str
        The artifact's model name.
    base_url : str
        OpenAI-compatible base URL (``.../v1``); ``/chat/completions`` is appended.
    model : str
        The model id sent upstream.
    price_in, price_out : float
        USD per 1M input and output tokens.
    timeout_s : float
        Seconds one attempt may take (connecting, sending, reading the reply).
    connect_timeout_s : float
        Seconds opening the connection may take, within ``timeout_s``.
    max_concurrency : int
        Calls in flight to this upstream at once; more wait their turn.
    api_key : str or None
        The key read from ``api_key_env``; kept out of ``repr`` so that it
        cannot reach a log line or a traceback through this object.
    api_key_env : str or None
        The variable it was read from (``training.serve`` removes it from the environment).
    logprobs : bool
        The upstream returns token log-probabilities when asked.
    """

    name: str
    base_url: str
    model: str
    price_in: float
    price_out: float
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_concurrency: int = 64
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    logprobs: bool = False

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def label(self) -> str:
        """How messages name this upstream: model and URL, credentials in the URL removed."""
        return f"{self.name} at {redact_url(self.base_url)}"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of one call from its ``usage``.

        Parameters
        ----------
        prompt_tokens, completion_tokens : int
            The upstream's ``usage`` counts.

        Returns
        -------
        float
        """
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages and metrics.

    Parameters
    ----------
    url : str

    Returns
    -------
    str
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _number(where: str, key: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{where}: {key} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def parse_backends(document: Mapping[str, Any], models: tuple[str, ...],
                   artifact_prices: Mapping[str, tuple[float, float]], *, source: str = "backends.toml",
                   environ: Mapping[str, str] | None = None, key_prefix: str = KEY_PREFIX,
                   reserved: Collection[str] = ()) -> dict[str, Backend]:
    """Check a parsed ``backends.toml`` against the artifact's models and build one :class:`Backend` per model.

    Parameters
    ----------
    document : mapping
        The parsed TOML.
    models : tuple of str
        The artifact's model names (``Router.models_``).
    artifact_prices : mapping of str to (float, float)
        Prices the artifact's cost estimator was fitted with
        (``Estimator.token_prices``), used where the file gives none.
    source : str, default="backends.toml"
        How messages name the file.
    environ : mapping, optional
        Where ``api_key_env`` is looked up; default ``os.environ``.
    key_prefix : str, default=:data:`KEY_PREFIX`
        Every ``api_key_env`` must start with it.
    reserved : collection of str
        Variables no ``api_key_env`` may name (the service's own secrets), whatever their prefix.

    Returns
    -------
    dict of str to Backend
        In the artifact's model order.

    Raises
    ------
    ValueError
        On a missing or unknown model, an unknown key, a bad value, missing
        prices, an unset key variable or one outside ``key_prefix``, naming the model and what to change.
    """
    if not isinstance(key_prefix, str) or not key_prefix:
        raise ValueError("the upstream key prefix (--upstream-key-prefix) must be a non-empty string, e.g. "
                         f"{KEY_PREFIX!r}")
    environ = os.environ if environ is None else environ
    tables = document.get("models")
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError(f"{source} has no [models.\"NAME\"] tables; add one per model of the artifact: "
                         f"{list(models)}")
    unknown = sorted(set(tables) - set(models))
    if unknown:
        raise ValueError(f"{source} names model(s) {unknown} that the artifact does not know; "
                         f"its models are {list(models)}")
    missing = [name for name in models if name not in tables]
    if missing:
        raise ValueError(f"{source} has no backend for model(s) {missing} of the artifact; add a "
                         f"[models.\"NAME\"] table with base_url and model for each")
    backends = {}
    for name in models:
        where = f"{source} [models.{name!r}]"
        table = tables[name]
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table with base_url and model")
        extra = sorted(set(table) - _KEYS)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; allowed are {sorted(_KEYS)}")
        for required in ("base_url", "model"):
            if not isinstance(table.get(required), str) or not table[required]:
                raise ValueError(f"{where}: {required} must be a non-empty string")
        scheme = urlsplit(table["base_url"]).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"{where}: base_url must start with http:// or https://, got "
                             f"{redact_url(table['base_url'])!r}")
        if ("price_in" in table) != ("price_out" in table):
            raise ValueError(f"{where}: give both price_in and price_out (USD per 1M tokens), or neither")
        if "price_in" in table:
            prices = (_number(where, "price_in", table["price_in"], positive=False),
                      _number(where, "price_out", table["price_out"], positive=False))
        elif name in artifact_prices:
            prices = artifact_prices[name]
        else:
            raise ValueError(f"{where}: no prices, and the artifact has none for this model (its cost was "
                             "learned): add price_in and price_out (USD per 1M tokens)")
        key: str | None = None
        variable: str | None = None
        if "api_key_env" in table:
            variable = table["api_key_env"]
            if not isinstance(variable, str) or not variable:
                raise ValueError(f"{where}: api_key_env must name an environment variable")
            if variable in reserved or not variable.startswith(key_prefix):
                raise ValueError(f"{where}: api_key_env {variable[:100]!r} "
                                 + ("is one of the service's own secret variables" if variable in reserved else
                                    f"does not start with {key_prefix!r} (--upstream-key-prefix)")
                                 + f"; only variables named {key_prefix}... may be sent to an upstream, put that "
                                   "upstream's key in one")
            key = environ.get(variable)
            if not key:
                raise ValueError(f"{where}: environment variable {variable} (api_key_env) is not set or empty")
        concurrency = table.get("max_concurrency", 64)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"{where}: max_concurrency must be an integer >= 1, got {concurrency!r}")
        logprobs = table.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise ValueError(f"{where}: logprobs must be true or false, got {logprobs!r}")
        backends[name] = Backend(name=name, base_url=table["base_url"], model=table["model"],
                                 price_in=prices[0], price_out=prices[1],
                                 timeout_s=_number(where, "timeout_s", table.get("timeout_s", DEFAULT_TIMEOUT_S),
                                                   positive=True),
                                 connect_timeout_s=_number(where, "connect_timeout_s",
                                                           table.get("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S),
                                                           positive=True),
                                 max_concurrency=concurrency, api_key=key, api_key_env=variable,
                                 logprobs=logprobs)
    return backends


def load_backends(path: str | Path, models: tuple[str, ...], artifact_prices: Mapping[str, tuple[float, float]],
                  *, key_prefix: str = KEY_PREFIX, reserved: Collection[str] = (),
                  expected_sha256: str | None = None) -> dict[str, Backend]:
    """Read and check ``backends.toml`` (see :func:`parse_backends`).

    Parameters
    ----------
    path : str or Path
    models : tuple of str
        The artifact's model names.
    artifact_prices : mapping of str to (float, float)
        The artifact's own prices, the fallback.
    key_prefix, reserved
        As in :func:`parse_backends`.
    expected_sha256 : str, optional
        The file's SHA-256 (hex) as the operator recorded it: a file that
        differs is refused before it is parsed. The bytes hashed are the
        bytes parsed (read once), so a swap between check and use changes
        nothing.

    Returns
    -------
    dict of str to Backend

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not valid TOML, fails a check of :func:`parse_backends`,
        or its SHA-256 is not ``expected_sha256``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"--backends {path} does not exist") from None
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if not hmac.compare_digest(digest, expected_sha256.strip().lower()):
            raise ValueError(f"--backends {path} has sha256 {digest}, not the pinned {expected_sha256.strip()} "
                             "(--backends-sha256): the file was changed; check it, then pin its new hash")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--backends {path} is not valid TOML: {error}") from None
    return parse_backends(document, models, artifact_prices, source=str(path), key_prefix=key_prefix,
                          reserved=reserved)
