"""An OpenAI-compatible HTTP API over one base model and its adapters.

``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (with server-sent-event
streaming) as OpenAI defines them; the ``model`` field picks ``base`` or an adapter by
name. ``/admin/adapters`` (admin token) lists, loads and unloads adapters at run time,
from the allowed directory only. ``/health`` reports the batch worker. Errors use
OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Everything a request asks for is checked when it arrives, for that request alone
(fields, sizes, tokens against the context window), so what reaches a batch can run;
whatever still fails in a batch fails that request only (see engine.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError
from tunelab.generation.settings import GenerationSettings
from tunelab.serving.adapters import AdapterError, AdapterSet
from tunelab.serving.engine import BatchingEngine, QueueFull, Request as GenerationRequest, WorkerStopped, finish_reason
from tunelab.serving.settings import ServerSettings
from tunelab.serving import tools as tool_calls
from tunelab.serving.schema import (
    CHAT_ONLY, UNSUPPORTED, ApiError, ChatBody, CompletionBody, LoadBody, Options, describe, error_body,
)
from tunelab.web import Refusal, RequestGuard, error_id, internal_error_message, log_internal_error

log = logging.getLogger("tunelab.serving")


def bearer(header: bytes) -> bytes:
    """The token of an 'Authorization: Bearer TOKEN' header, as bytes (keys are ASCII)."""
    return header[7:].strip() if header[:7].lower() == b"bearer " else b""


OPEN_PATHS = ("/health",)  # answered without a key (load balancers' probes), and without a body


def authorizer(settings: ServerSettings) -> Any:
    """Keys and content type, from the headers alone: a client without a key is refused
    before a byte of its body is read. With API keys set, every path but /health needs
    one (deny by default: an unknown path is no way in)."""
    def authorize(scope: dict) -> Refusal | None:
        headers, path = dict(scope["headers"]), scope["path"]
        given = bearer(headers.get(b"authorization", b""))
        if path.startswith("/admin"):
            if not settings.admin_token:
                return 403, error_body("the admin API is off: start the server with --admin-token-file", code="admin_disabled")
            if not hmac.compare_digest(given, settings.admin_token.encode()):
                return 401, error_body("a valid admin token is needed", code="invalid_api_key")
        elif path in OPEN_PATHS:
            if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
                return 400, error_body(f"{path} takes no body")
        elif settings.api_keys and not any(hmac.compare_digest(given, k.encode()) for k in settings.api_keys):
            return 401, error_body("Incorrect API key provided.", code="invalid_api_key")
        if scope["method"] == "POST" and headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/json":
            return 415, error_body("send JSON (Content-Type: application/json)")
        return None

    return authorize


def _virtual_tokens(model: Any) -> int:
    """Soft-prompt adapters (prompt and prefix tuning) put this many tokens before the prompt."""
    config = getattr(model, "active_peft_config", None)
    return int(getattr(config, "num_virtual_tokens", 0) or 0) if getattr(config, "is_prompt_learning", False) else 0


class Api:
    """Admission (every check a request needs, for that request alone), then generation
    through the batching engine, then OpenAI's answer shapes."""

    def __init__(self, loaded: Any, adapters: AdapterSet, settings: ServerSettings) -> None:
        from tunelab.generation.batched import sliding_window

        self.loaded, self.tokenizer, self.adapters, self.settings = loaded, loaded.tokenizer, adapters, settings
        self.engine = BatchingEngine(adapters, self.tokenizer, max_batch_size=settings.max_batch_size,
                                     max_queue=settings.max_queue, batch_wait_ms=settings.batch_wait_ms)
        self.context_window = loaded.context_window
        self.sliding_window = sliding_window(loaded.model.config)
        self.created = int(time.time())

    # -- admission ----------------------------------------------------------------------
    def check(self, body: Options) -> None:
        for name, neutral in UNSUPPORTED.items():
            if name in CHAT_ONLY and isinstance(body, ChatBody):
                continue
            if getattr(body, name) not in neutral:
                raise ApiError(400, f"'{name}' is not supported by tunelab serve", param=name, code="unsupported_parameter")
        self.adapters.get(body.model)  # 404 model_not_found before anything runs
        if body.stream_options and not body.stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")
        stop = body.stop_strings()
        if len(stop) > 4 or any(not s or len(s) > self.settings.max_stop_chars for s in stop):
            raise ApiError(400, f"stop: up to 4 non-empty strings of at most {self.settings.max_stop_chars} characters", param="stop")
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > self.settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens is {asked}; this server allows at most {self.settings.max_tokens_limit}", param="max_tokens")

    def check_size(self, texts: Sequence[str], answers: int, param: str) -> None:
        """``answers``: prompts x n, the generations the request asks for."""
        if answers > self.settings.max_prompts:
            raise ApiError(400, f"{answers} answers (prompts x n) is over this server's {self.settings.max_prompts} per request")
        chars = sum(len(t) for t in texts)
        if chars > self.settings.max_prompt_chars:
            raise ApiError(400, f"{chars} characters of {param} is over this server's {self.settings.max_prompt_chars}", param=param)

    def max_new_tokens(self, body: Options, prompt_tokens: int, default: int) -> int:
        """The request's token budget: its prompt (with an adapter's virtual tokens) must
        fit the encoder (encoder-decoder) or, with the new tokens, the context window and
        any sliding attention window (decoder-only)."""
        asked = body.max_completion_tokens or body.max_tokens
        prompt_tokens += _virtual_tokens(self.adapters.get(body.model).model)
        limits = [(self.settings.max_prompt_tokens, "this server's prompt limit")]
        if self.loaded.is_encoder_decoder:
            limits.append((self.context_window, "the model's input window"))
        for limit, what in limits:
            if limit and prompt_tokens > limit:
                raise ApiError(400, f"the prompt has {prompt_tokens} tokens; {what} is {limit}", param="prompt",
                               code="context_length_exceeded")
        budget = asked or default
        if self.loaded.is_encoder_decoder:
            return budget
        for window, what in ((self.context_window, "context window"), (self.sliding_window, "sliding attention window")):
            if not window:
                continue
            room = window - prompt_tokens
            if room < 1:
                raise ApiError(400, f"the prompt has {prompt_tokens} tokens; the model's {what} is {window}",
                               code="context_length_exceeded")
            if asked is not None and asked > room:
                raise ApiError(400, f"{prompt_tokens} prompt tokens + max_tokens {asked} exceed the model's {what} of "
                               f"{window}", param="max_tokens", code="context_length_exceeded")
            budget = min(budget, room)
        return budget

    def generation_settings(self, body: Options, max_tokens: int) -> GenerationSettings:
        sample = body.temperature > 0
        return GenerationSettings(max_new_tokens=max_tokens, do_sample=sample, temperature=body.temperature if sample else 1.0,
                                  top_k=0, top_p=body.top_p if sample else 1.0, stop=body.stop_strings(),
                                  seed=(body.seed if body.seed is not None else -1) if sample else 0)

    async def tokenize(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Off the event loop: a long prompt must not stall every other client."""
        return await run_in_threadpool(lambda: [self.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts])

    async def render_chat(self, body: ChatBody) -> str:
        """The chat template, off the event loop. Whatever the template refuses or fails on
        (roles out of order, a system turn it has none for, odd content) is the request's
        fault: a 400."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        native = tool_calls.template_takes_tools(self.tokenizer)
        messages = tool_calls.chat_messages(body, native)
        extra = {"tools": [t.model_dump(exclude_none=True) for t in body.tools]} if native and body.tools else {}
        try:
            return await run_in_threadpool(self.tokenizer.apply_chat_template, messages, tokenize=False,
                                           add_generation_prompt=True, **extra)
        except Exception as exc:  # noqa: BLE001 - jinja's TemplateError, or what a template raises on odd input
            raise ApiError(400, f"this model's chat template refuses these messages: {type(exc).__name__}: {exc}"[:500],
                           param="messages") from None

    # -- running ------------------------------------------------------------------------
    def submit(self, body: Options, prompts: Sequence[list[int]], max_tokens: int, stream: asyncio.Queue | None,
               constraint: Any = None, stop: Sequence[str] = ()) -> list[GenerationRequest]:
        """``constraint``: a function of no arguments making each answer's Constraint (a
        JSON schema's); ``stop``: stop strings added to the request's own."""
        gen = self.generation_settings(body, max_tokens)
        if stop:
            gen = replace(gen, stop=(*gen.stop, *stop))
        loop = asyncio.get_running_loop()
        requests = []
        for index, ids in enumerate(p for p in prompts for _ in range(body.n)):
            on_text = None
            if stream is not None:
                on_text = (lambda text, index=index: loop.call_soon_threadsafe(stream.put_nowait, (index, text)))
            requests.append(GenerationRequest(body.model, ids, gen, on_text=on_text,
                                              constraint=constraint() if constraint else None))
        try:
            for request in requests:
                self.engine.submit(request)
        except (QueueFull, WorkerStopped) as exc:
            for request in requests:
                request.cancelled.set()
            if isinstance(exc, WorkerStopped):
                raise ApiError(503, str(exc), "server_error", code="worker_stopped") from None
            raise ApiError(429, str(exc), "server_overloaded", code="queue_full") from None
        return requests

    async def wait_all(self, requests: list[GenerationRequest], http: Request) -> list[Any] | None:
        """The results, or None when the client went away first (its requests are then
        cancelled, freeing their places in the queue and the batch). A wait past
        ``request_timeout`` cancels them and answers 504."""
        futures = [asyncio.wrap_future(r.result) for r in requests]
        deadline = time.monotonic() + self.settings.request_timeout
        try:
            while True:
                done, _ = await asyncio.wait(futures, timeout=0.25)
                if len(done) == len(futures):
                    return [self.outcome(f) for f in futures]
                if await http.is_disconnected():
                    return None
                if time.monotonic() > deadline:
                    raise ApiError(504, f"no answer within {self.settings.request_timeout:g} s; try again, or ask for fewer "
                                   "tokens", "server_error", code="timeout")
        finally:
            for request in requests:
                request.cancelled.set()

    def outcome(self, future: asyncio.Future) -> Any:
        """A request's result; a failure in generation becomes an OpenAI-shaped error."""
        try:
            return future.result()
        except AdapterError as exc:  # its adapter was unloaded while it waited
            raise ApiError(exc.status, str(exc), param="model", code="model_not_found" if exc.status == 404 else None) from None
        except TunelabError as exc:  # the request asked for something the model cannot do
            raise ApiError(400, str(exc)) from None
        except asyncio.CancelledError:
            raise ApiError(503, "the request was cancelled by the server", "server_error") from None
        except Exception as exc:  # noqa: BLE001 - the log gets the traceback, the client an id
            ident = error_id()
            log.error("error %s: generation failed", ident, exc_info=exc)
            raise ApiError(500, f"generation failed (error id {ident}; the server log has the detail)", "server_error") from None

    async def answer(self, body: Options, http: Request, prompts: list[list[int]], max_tokens: int, chat: bool,
                     constraint: Any = None) -> Response:
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        if body.stream:
            events: asyncio.Queue = asyncio.Queue()
            requests = self.submit(body, prompts, max_tokens, events, constraint)
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = self.stream(requests, events, _Chunks(ident, body.model, chat), include_usage, prompts)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        outputs = await self.wait_all(self.submit(body, prompts, max_tokens, None, constraint), http)
        if outputs is None:
            return Response(status_code=499)  # nobody is listening; nginx's 'client closed request'
        if constraint is not None:
            for output in outputs:
                output.text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)  # the whole JSON
        choices = [({"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                     "finish_reason": finish_reason(o)} if chat else
                    {"index": i, "text": o.text, "logprobs": None, "finish_reason": finish_reason(o)})
                   for i, o in enumerate(outputs)]
        return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                             "model": body.model, "choices": choices, "usage": usage(prompts, outputs),
                             "system_fingerprint": None})

    async def stream(self, requests: list[GenerationRequest], events: asyncio.Queue, chunks: _Chunks, include_usage: bool,
                     prompts: list[list[int]]) -> AsyncIterator[bytes]:
        futures = [asyncio.wrap_future(r.result) for r in requests]
        finished: set[int] = set()
        deadline = time.monotonic() + self.settings.request_timeout
        try:
            if chunks.chat:
                yield chunks.chunk([chunks.choice(i, None, None, role=True) for i in range(len(requests))])
            while len(finished) < len(requests):
                getter = asyncio.ensure_future(events.get())
                waiting = [getter, *[f for i, f in enumerate(futures) if i not in finished]]
                done, _ = await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    getter.cancel()
                    raise ApiError(504, f"no answer within {self.settings.request_timeout:g} s", "server_error", code="timeout")
                if getter in done:
                    index, text = getter.result()
                    yield chunks.chunk([chunks.choice(index, text, None)])
                else:
                    getter.cancel()
                while not events.empty():  # text before a finish goes first
                    index, text = events.get_nowait()
                    yield chunks.chunk([chunks.choice(index, text, None)])
                for i, future in enumerate(futures):
                    if i not in finished and future.done():
                        finished.add(i)
                        yield chunks.chunk([chunks.choice(i, None if chunks.chat else "", finish_reason(self.outcome(future)))])
            if include_usage:
                yield chunks.chunk([], usage=usage(prompts, [f.result() for f in futures]))
        except ApiError as exc:  # the status line went out already: the error travels as an event
            yield b"data: " + json.dumps(error_body(str(exc), exc.type, exc.param, exc.code)).encode() + b"\n\n"
        finally:
            for request in requests:  # a client that went away frees its slots
                request.cancelled.set()
        yield b"data: [DONE]\n\n"

    # -- endpoints ----------------------------------------------------------------------
    async def parse(self, http: Request, model: type[Options]) -> Any:
        """The body as ``model``, parsed and validated off the event loop: a body of tens of
        thousands of small objects takes a while, and must not stall other clients."""
        from pydantic import ValidationError

        raw = await http.body()
        try:
            return await run_in_threadpool(model.model_validate_json, raw)
        except ValidationError as exc:
            message, param = describe(exc.errors())
            raise ApiError(400, message, param=param) from None

    async def completions(self, http: Request) -> Response:
        body: CompletionBody = await self.parse(http, CompletionBody)
        self.check(body)
        texts = body.texts()
        if not texts or any(not t for t in texts):
            raise ApiError(400, "prompt must be a non-empty string or list of them", param="prompt")
        self.check_size(texts, len(texts) * body.n, "prompt")
        prompts = await self.tokenize(texts)
        max_tokens = self.max_new_tokens(body, max(len(p) for p in prompts), 16)  # OpenAI's default for completions
        return await self.answer(body, http, prompts, max_tokens, chat=False)

    async def chat(self, http: Request) -> Response:
        body: ChatBody = await self.parse(http, ChatBody)
        self.check(body)
        if len(body.messages) > self.settings.max_messages:
            raise ApiError(400, f"{len(body.messages)} messages is over this server's {self.settings.max_messages}", param="messages")
        tools = [json.dumps(t.model_dump(exclude_none=True)) for t in body.tools or []]
        self.check_size([m.text() for m in body.messages] + tools, body.n, "messages")  # one prompt, n answers
        text = await self.render_chat(body)
        prompt = (await self.tokenize([text], add_special_tokens=False))[0]
        body.messages = []  # free the messages while the request waits for its answer
        max_tokens = self.max_new_tokens(body, len(prompt), self.settings.max_tokens_limit)
        functions = tool_calls.allowed_functions(body)
        if functions is not None:
            return await self.answer_with_tools(body, http, prompt, max_tokens, functions)
        schema = tool_calls.response_schema(body)
        constraint = await self.constraint_maker(schema, "response_format") if schema else None
        return await self.answer(body, http, [prompt], max_tokens, chat=True, constraint=constraint)

    async def constraint_maker(self, schema: dict[str, Any], param: str) -> Any:
        """A function making a fresh constraint for ``schema`` (compiled once, off the event
        loop); a schema llguidance refuses is the request's fault."""
        from tunelab.agents.constrained import SchemaConstraint, json_grammar, vocab_size

        size = vocab_size(self.loaded.model)
        try:
            grammar = await run_in_threadpool(json_grammar, schema)
            checked = [await run_in_threadpool(SchemaConstraint, self.tokenizer, size, grammar)]  # compiles it
        except (TunelabError, ValueError, TypeError) as exc:
            raise ApiError(400, f"{param}: the JSON schema cannot be used: {exc}"[:500], param=param) from None
        # the checked constraint serves the first answer; n > 1 makes fresh ones
        return lambda: checked.pop() if checked else SchemaConstraint(self.tokenizer, size, grammar)

    async def answer_with_tools(self, body: ChatBody, http: Request, prompt: list[int], max_tokens: int,
                                functions: list[str]) -> Response:
        """A reply that may (auto) or must (required, a named function) call a tool: free
        text up to "<tool_call>" if the model opens one, then the call under its schema.
        Streamed, the reply goes out once complete (a call is only valid whole), in
        OpenAI's chunks."""
        if body.n > 1:
            raise ApiError(400, "tools work with n: 1 in tunelab serve", param="n")
        maker = await self.constraint_maker(tool_calls.call_schema(body, functions), "tools")
        original, outputs, content = prompt, [], None
        if not tool_calls.must_call(body):
            free = await self.wait_all(self.submit(body, [prompt], max_tokens, None, stop=(tool_calls.CALL_OPEN,)), http)
            if free is None:
                return Response(status_code=499)
            outputs.append(free[0])
            if tool_calls.CALL_OPEN not in self.tokenizer.decode(free[0].token_ids, skip_special_tokens=True):
                return self.chat_response(body, original, outputs, free[0].text, None, finish_reason(free[0]))
            content = free[0].text or None
            prompt = prompt + free[0].token_ids
        else:
            prompt = prompt + self.tokenizer(tool_calls.CALL_OPEN, add_special_tokens=False)["input_ids"]
        left = max_tokens - sum(len(o.token_ids) for o in outputs)
        if left < 1:
            return self.chat_response(body, original, outputs, content, None, "length")
        call = await self.wait_all(self.submit(body, [prompt], left, None, maker), http)
        if call is None:
            return Response(status_code=499)
        outputs.append(call[0])
        text = self.tokenizer.decode(call[0].token_ids, skip_special_tokens=True)
        try:
            made = tool_calls.tool_call(text)
        except (ValueError, KeyError):  # only when max_tokens cut the call short
            return self.chat_response(body, original, outputs, content, None, "length")
        return self.chat_response(body, original, outputs, content, [made], "tool_calls")

    def chat_response(self, body: ChatBody, prompt: list[int], outputs: list[Any], content: str | None,
                      calls: list[dict[str, Any]] | None, reason: str) -> Response:
        ident = "chatcmpl-" + secrets.token_hex(12)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            chunks = replay_chunks(_Chunks(ident, body.model, True), content, calls, reason,
                                   usage([prompt], outputs) if include_usage else None)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return JSONResponse({"id": ident, "object": "chat.completion",
                             "created": int(time.time()), "model": body.model,
                             "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                             "usage": usage([prompt], outputs), "system_fingerprint": None})


async def replay_chunks(chunks: _Chunks, content: str | None, calls: list[dict[str, Any]] | None, reason: str,
                        counted: dict[str, int] | None) -> AsyncIterator[bytes]:
    """A finished chat reply as OpenAI's stream: the role, the text, each tool call whole
    (with its index, as clients that join call deltas expect), the finish reason, usage."""
    yield chunks.chunk([chunks.choice(0, None, None, role=True)])
    if content:
        yield chunks.chunk([chunks.choice(0, content, None)])
    for index, call in enumerate(calls or []):
        delta = {"tool_calls": [{"index": index, **call}]}
        yield chunks.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
    yield chunks.chunk([chunks.choice(0, None, reason)])
    if counted is not None:
        yield chunks.chunk([], usage=counted)
    yield b"data: [DONE]\n\n"


@dataclass
class _Chunks:
    """Server-sent-event chunks of one streamed answer."""

    ident: str
    model: str
    chat: bool
    stamp: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return b"data: " + json.dumps({"id": self.ident, "object": kind, "created": self.stamp, "model": self.model,
                                       "choices": choices, **extra}).encode() + b"\n\n"

    def choice(self, index: int, text: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}


def usage(prompts: Sequence[list[int]], outputs: Sequence[Any]) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in prompts)  # each prompt counted once, as OpenAI does for n > 1
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(AdapterError)
    async def adapter_error(request: Request, exc: AdapterError) -> JSONResponse:
        code = "model_not_found" if exc.status == 404 and "does not exist" in str(exc) else None
        return JSONResponse(error_body(str(exc), "invalid_request_error", "model" if code else None, code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe(exc.errors())
        return JSONResponse(error_body(message, param=param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = exc.status_code == 400 and "parsing the body" in str(exc.detail)  # FastAPI's words for bad UTF-8
        return JSONResponse(error_body("the body is not valid JSON in UTF-8" if unreadable else str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: the detail stays in the log
        ident = log_internal_error(exc, request.scope)
        return JSONResponse(error_body(internal_error_message(ident), "server_error"), 500)


def create_app(loaded: Any, adapters: AdapterSet, settings: ServerSettings | None = None) -> RequestGuard:
    """The ASGI app. ``loaded`` is the base's LoadedModel (for its tokenizer and config)."""
    settings = settings or ServerSettings()
    api = Api(loaded, adapters, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        api.engine.close()  # the batch worker stops with the server

    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.adapters, app.state.api = api.engine, adapters, api
    _error_handlers(app)

    @app.get("/health")
    def health() -> JSONResponse:
        state = api.engine.health()
        return JSONResponse({"status": "ok" if state["worker_alive"] else "worker stopped", **state},
                            200 if state["worker_alive"] else 503)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": a["name"], "object": "model", "created": api.created, "owned_by": "tunelab",
                                            "kind": a["kind"]} for a in adapters.describe()]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        adapter = adapters.get(name)
        return {"id": adapter.name, "object": "model", "created": api.created, "owned_by": "tunelab", "kind": adapter.kind}

    app.post("/v1/completions")(api.completions)
    app.post("/v1/chat/completions")(api.chat)

    @app.get("/admin/adapters")
    def list_adapters() -> dict[str, Any]:
        return {"adapters": adapters.describe(), "allowed_dir": None if adapters.allowed_dir is None else str(adapters.allowed_dir),
                "queue": api.engine.waiting, "stats": api.engine.stats}

    @app.post("/admin/adapters", status_code=201)
    def load_adapter(body: LoadBody) -> dict[str, Any]:
        adapter = adapters.add(body.name, body.path)
        return {"name": adapter.name, "kind": adapter.kind, "path": str(adapter.path)}

    @app.delete("/admin/adapters/{name}")
    def unload_adapter(name: str) -> dict[str, Any]:
        adapters.remove(name)
        return {"name": name, "unloaded": True}

    return RequestGuard(app, settings.http, error=error_body, authorize=authorizer(settings))


def build_server(model: str, adapters: Sequence[str] = (), *, adapter_dir: str | Path | None = None,
                 settings: ServerSettings | None = None, **load_options: Any) -> Any:
    """Load the base once, then every ``NAME=PATH`` adapter onto views of it; the ASGI app."""
    from tunelab.models import load_model

    loaded = load_model(model, **load_options)
    pool = AdapterSet(loaded.model, allowed_dir=adapter_dir)
    for spec in adapters:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise AdapterError(f"--adapter wants NAME=PATH, got {spec!r}")
        pool.add(name, path, trusted=True)
    return create_app(loaded, pool, settings)


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    from tunelab.web import run

    run(app, host, port)
