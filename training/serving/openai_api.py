"""The OpenAI wire format the routing service speaks: request parsing, responses, errors.

Pure functions over decoded JSON, so that the parsing can be tested and
fuzzed without a server. :func:`parse_chat_request` turns a
``/v1/chat/completions`` body into a :class:`ChatRequest` or raises
:class:`APIError`, the one exception a handler turns into OpenAI's error
body ``{"error": {"message", "type", "param", "code"}}``; nothing else a
body can contain escapes as another exception type.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["APIError", "ChatRequest", "chat_response", "error_body", "parse_budget_model", "parse_chat_request",
           "parse_json", "parse_route_request", "sse_chunks"]

#: Request keys forwarded to the upstream as they are (sampling and length controls).
FORWARDED = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
                       "presence_penalty", "frequency_penalty", "user"})
#: Keys the router reads itself.
OWN = frozenset({"model", "messages", "stream", "stream_options", "metadata"})
#: Keys of the OpenAI API the router cannot honour: one selected text answer per request.
UNSUPPORTED = frozenset({"n", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
                         "response_format", "audio", "modalities", "prediction", "parallel_tool_calls"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
#: Message fields forwarded upstream. Any other field with a value is refused (400) rather than sent on
#: verbatim; fields the OpenAI SDK echoes back empty (``"tool_calls": None``, ``"annotations": []``) are dropped.
MESSAGE_FIELDS = frozenset({"role", "content", "name"})
#: Default most messages one request may hold.
MAX_MESSAGES = 256
#: JSON objects a body may hold per message allowed: a message, its text parts, and the request's own objects.
OBJECTS_PER_MESSAGE = 4
#: The name of the router in ``model``: ``router`` or ``router@BUDGET``.
ROUTER_MODEL = "router"


class APIError(Exception):
    """A request the service refuses, with what OpenAI's error body needs.

    Parameters
    ----------
    status : int
        HTTP status.
    message : str
        Says what is wrong and what to send instead.
    type : str, default="invalid_request_error"
        OpenAI's error ``type``.
    param : str, optional
        The request field at fault.
    code : str, optional
        OpenAI's error ``code``.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, OpenAI's error format.

    Parameters
    ----------
    message, type, param, code
        As in :class:`APIError`.

    Returns
    -------
    dict
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request.

    Attributes
    ----------
    prompt : str
        The query the router estimates: the text of the last user message.
    messages : list of dict
        The conversation, forwarded to each upstream called.
    task, subtask : str
        From ``metadata`` (``""`` when absent).
    budget : float or None
        From ``model``: ``router`` is ``None`` (the service's default),
        ``router@B`` is ``B``.
    stream : bool
        Whether the answer goes back as server-sent events.
    include_usage : bool
        ``stream_options.include_usage``: a last chunk with the usage.
    model : str
        ``model`` as received, echoed in the response.
    forwarded : dict
        The sampling parameters sent upstream unchanged (:data:`FORWARDED`).
    """

    prompt: str
    messages: list[dict[str, Any]]
    task: str
    subtask: str
    budget: float | None
    stream: bool
    include_usage: bool
    model: str
    forwarded: dict[str, Any] = field(default_factory=dict)


def _invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_json(raw: bytes, max_objects: int | None = None) -> Any:
    """Decode a request body: UTF-8 JSON, or :class:`APIError` 400.

    Parameters
    ----------
    raw : bytes
    max_objects : int, optional
        Most JSON objects the body may hold. Decoding stops at the next one,
        so a body of 30,000 tiny messages costs as much as one of
        ``max_objects`` (issue 30: ``json.loads`` holds the GIL for the
        whole body, even on a decision thread, and stalled every request).

    Returns
    -------
    object
        The decoded JSON value.
    """
    # every object starts with "{" (strings may hold more): few braces need no counting, and json's C path stays
    counted = max_objects is not None and raw.count(b"{") > max_objects
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):  # what json.loads refuses before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        decoder = _decoder(_counting_objects(max_objects)) if counted else _DECODER  # type: ignore[arg-type]
        return decoder.decode(text)
    except _TooManyObjects:
        raise _invalid(f"the request body holds more than {max_objects:,} JSON objects, more than "
                       f"--max-messages allows", "messages", "too_many_messages") from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise _invalid(f"the request body is not valid UTF-8 JSON ({type(error).__name__}: "
                       f"{str(error)[:200]})", code="invalid_json") from None
    except RecursionError:
        raise _invalid("the request body nests too deeply", code="invalid_json") from None


def _decoder(hook=None) -> json.JSONDecoder:
    """The request body's decoder: no ``NaN``/``Infinity``, no out-of-range number, ``hook`` for objects."""
    return json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=hook)


class _TooManyObjects(Exception):
    """Raised by :func:`_counting_objects`' hook; not a ValueError, so the decoder does not wrap it."""


def _counting_objects(limit: int):
    """An ``object_pairs_hook`` building dicts that raises once more than ``limit`` were built."""
    count = 0

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyObjects
        return dict(pairs)

    return hook


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e999``) is refused, not read as infinity
    (which would be forwarded upstream as the non-JSON ``Infinity``)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:50]} is out of range")
    return value


#: The decoder of bodies without an object count to keep: made once (``json.loads`` with options makes one per call).
_DECODER = _decoder()


def parse_budget_model(model: object) -> float | None:
    """The budget a request's ``model`` names: ``router`` -> ``None``, ``router@0.001`` -> ``0.001``.

    Parameters
    ----------
    model : object
        The request's ``model``.

    Returns
    -------
    float or None

    Raises
    ------
    APIError
        400 (``model_not_found``) for any other value.
    """
    if not isinstance(model, str):
        raise _invalid(f"model must be a string: {ROUTER_MODEL!r} or '{ROUTER_MODEL}@BUDGET'", "model")
    if model == ROUTER_MODEL:
        return None
    head, at, tail = model.partition("@")
    if head == ROUTER_MODEL and at:
        try:
            budget = float(tail)
        except ValueError:
            budget = math.nan
        if math.isfinite(budget) and budget > 0 and tail.strip() == tail:
            return budget
    raise APIError(400, f"model {model[:100]!r} is not served here: use {ROUTER_MODEL!r} or "
                        f"'{ROUTER_MODEL}@BUDGET' with BUDGET a mean cost per query in USD (GET /v1/models lists them)",
                   param="model", code="model_not_found")


def _message_text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _invalid(f"{where}.content[{i}] must be {{'type': 'text', 'text': str}}: the router reads text "
                               "only", where)
            texts.append(part["text"])
        return "\n".join(texts)
    raise _invalid(f"{where}.content must be a string or a list of text parts", where)


def _forwarded(key: str, value: object) -> object:
    """A sampling parameter checked for its type, so that a bad one is the caller's 400, not every upstream's."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if key in ("max_tokens", "max_completion_tokens", "seed"):
        ok = number and isinstance(value, int) and (key == "seed" or value >= 1)
    elif key == "stop":
        ok = isinstance(value, str) or (isinstance(value, list) and len(value) <= 4
                                        and all(isinstance(item, str) for item in value))
    elif key == "user":
        ok = isinstance(value, str)
    else:  # temperature, top_p, presence_penalty, frequency_penalty
        ok = number
    if not ok:
        raise _invalid(f"{key} has the wrong type or range (see the OpenAI chat-completions reference)", key)
    return value


def _metadata_text(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key, "")
    if not isinstance(value, str):
        raise _invalid(f"metadata.{key} must be a string", f"metadata.{key}")
    return value


def parse_chat_request(body: object, *, max_prompt_chars: int, needs_task: bool,
                       max_messages: int = MAX_MESSAGES) -> ChatRequest:
    """Check a decoded ``/v1/chat/completions`` body.

    Parameters
    ----------
    body : object
        The decoded JSON.
    max_prompt_chars : int
        Most characters the messages may hold together (what is sent upstream).
    needs_task : bool
        Whether the router's estimator reads ``task`` (then ``metadata.task`` is required).
    max_messages : int, default=:data:`MAX_MESSAGES`
        Most messages the request may hold.

    Returns
    -------
    ChatRequest

    Raises
    ------
    APIError
        400 naming the field at fault, for anything that is not a request the router can serve.
    """
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", code="invalid_json")
    unsupported = sorted(key for key in body if key in UNSUPPORTED and not (key == "n" and body[key] in (1, None)))
    if unsupported:
        raise _invalid(f"{unsupported[0]!r} is not supported: the router returns one text answer, selected "
                       "among the models it called", unsupported[0], "unsupported_parameter")
    unknown = sorted(str(key)[:100] for key in body if key not in OWN | FORWARDED | UNSUPPORTED)
    if unknown:
        raise _invalid(f"unknown parameter {unknown[0]!r}", unknown[0], "unknown_parameter")
    budget = parse_budget_model(body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list of {'role', 'content'} objects", "messages")
    if len(messages) > max_messages:
        raise _invalid(f"messages holds {len(messages):,} messages, more than the service's limit of "
                       f"{max_messages:,} (--max-messages)", "messages", "too_many_messages")
    checked, prompt, total = [], None, 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"{where} must be an object with role and content", where)
        extra = sorted(str(key)[:100] for key, value in message.items()
                       if key not in MESSAGE_FIELDS and value not in (None, [], {}, ""))
        if extra:
            raise _invalid(f"{where} has the field {extra[0]!r}, which the router does not forward; send "
                           f"{sorted(MESSAGE_FIELDS)} only", where, "unknown_parameter")
        if "name" in message and message["name"] is not None and not isinstance(message["name"], str):
            raise _invalid(f"{where}.name must be a string", f"{where}.name")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role must be one of {sorted(ROLES)}", f"{where}.role")
        text = _message_text(message.get("content"), where)
        total += len(text)
        if total > max_prompt_chars:
            raise _invalid(f"the messages hold more than {max_prompt_chars:,} characters, the service's limit "
                           "(--max-prompt-chars)", "messages", "prompt_too_long")
        if role == "user":
            prompt = text
        checked.append({key: message[key] for key in ("role", "content", "name") if message.get(key) is not None})
    if prompt is None:
        raise _invalid("messages has no user message: the last one is the query the router decides on", "messages")
    metadata = body.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _invalid("metadata must be an object of strings (task, subtask)", "metadata")
    task, subtask = _metadata_text(metadata, "task"), _metadata_text(metadata, "subtask")
    if needs_task and not task:
        raise _invalid("metadata.task is required: this router's estimates read the task", "metadata.task")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _invalid("stream_options must be an object with a boolean include_usage", "stream_options")
    forwarded = {key: _forwarded(key, body[key]) for key in sorted(FORWARDED) if body.get(key) is not None}
    return ChatRequest(prompt=prompt, messages=checked, task=task, subtask=subtask, budget=budget,
                       stream=stream, include_usage=bool(options.get("include_usage", False)), model=body["model"],
                       forwarded=forwarded)


def parse_route_request(body: object, *, max_prompt_chars: int, needs_task: bool, max_messages: int = MAX_MESSAGES
                        ) -> tuple[ChatRequest, dict[str, dict[str, Any]], set[str]]:
    """Check a ``/v1/route`` body: a chat request plus what the caller's own calls returned.

    ``observed`` maps each model called so far to ``{"cost": USD, "response": text}``;
    ``excluded`` lists models that failed (see ``Router.decide``). The
    router checks the model names themselves.

    Parameters
    ----------
    body : object
        The decoded JSON.
    max_prompt_chars, needs_task, max_messages
        As in :func:`parse_chat_request`.

    Returns
    -------
    (ChatRequest, dict, set of str)

    Raises
    ------
    APIError
        400 naming the field at fault.
    """
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", code="invalid_json")
    rest = {key: value for key, value in body.items() if key not in ("observed", "excluded")}
    parsed = parse_chat_request(rest, max_prompt_chars=max_prompt_chars, needs_task=needs_task,
                                max_messages=max_messages)
    observed = body.get("observed") or {}
    if not isinstance(observed, dict):
        raise _invalid("observed must be an object {model: {'cost': USD, 'response': text}}", "observed")
    checked = {}
    for model, result in observed.items():
        where = f"observed[{model[:100]!r}]"
        if not isinstance(result, dict) or set(result) - {"cost", "response"}:
            raise _invalid(f"{where} must be an object with cost and response only", "observed")
        cost, response = result.get("cost"), result.get("response", "")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
            raise _invalid(f"{where}.cost must be a finite number >= 0 (USD)", "observed")
        if not isinstance(response, str):
            raise _invalid(f"{where}.response must be a string", "observed")
        checked[model] = {"cost": float(cost), "response": response}
    excluded = body.get("excluded") or []
    if not isinstance(excluded, list) or not all(isinstance(name, str) for name in excluded):
        raise _invalid("excluded must be a list of model names", "excluded")
    return parsed, checked, set(excluded)


def chat_response(answer: str, *, model: str, finish_reason: str, usage: dict[str, int],
                  router: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object with the selected answer and the router's account of the cascade.

    Parameters
    ----------
    answer : str
        The selected model's text.
    model : str
        The model that wrote it (the artifact's name).
    finish_reason : str
        Its upstream's ``finish_reason``.
    usage : dict
        Token counts summed over every successful call.
    router : dict
        The extra ``router`` field: models called, cost, per-step latency.

    Returns
    -------
    dict
    """
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                         "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage, "router": router}


def sse_chunks(response: dict[str, Any], *, include_usage: bool) -> Iterator[bytes]:
    """A finished ``chat.completion`` as ``chat.completion.chunk`` server-sent events, ending with ``[DONE]``.

    The cascade has run before the first chunk: this is the selected
    answer streamed once chosen, not tokens streamed through the cascade.

    Parameters
    ----------
    response : dict
        From :func:`chat_response`.
    include_usage : bool
        Send a last chunk with the usage and no choices (OpenAI's ``stream_options``).

    Yields
    ------
    bytes
        ``data: {...}\\n\\n`` lines.
    """
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
            "model": response["model"]}
    choice = response["choices"][0]
    deltas = [({"role": "assistant", "content": ""}, None), ({"content": choice["message"]["content"]}, None),
              ({}, choice["finish_reason"])]
    for delta, finish in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if finish is not None:
            chunk["router"] = response["router"]
        yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
    if include_usage:
        yield b"data: " + json.dumps({**base, "choices": [], "usage": response["usage"]}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
