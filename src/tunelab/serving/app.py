"""An OpenAI-compatible HTTP API over one base model and its adapters.

``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (with server-sent-event
streaming) as OpenAI defines them; the ``model`` field picks ``base`` or an adapter by
name. ``/admin/adapters`` (admin token) lists, loads and unloads adapters at run time,
from the allowed directory only. Errors use OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError
from tunelab.generation.settings import GenerationSettings
from tunelab.serving.adapters import AdapterError, AdapterSet
from tunelab.serving.engine import BatchingEngine, QueueFull, Request as GenerationRequest, finish_reason
from tunelab.web import BodyLimit


@dataclass
class ServerSettings:
    """Limits and keys of one server."""

    api_keys: tuple[str, ...] = field(default=(), metadata={"help": "Accepted API keys (Authorization: Bearer KEY); none = no key needed."})
    admin_token: str | None = field(default=None, metadata={"help": "Token for /admin/adapters; unset = no admin endpoint."})
    max_tokens_limit: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for."})
    max_batch_size: int = field(default=16, metadata={"help": "Most requests generated together."})
    max_queue: int = field(default=256, metadata={"help": "Most requests waiting; more get 429."})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "Largest request body."})
    max_prompts: int = field(default=32, metadata={"help": "Most prompts x n in one request."})
    batch_wait_ms: float = field(default=5.0, metadata={"help": "How long the batcher waits for companions of a request."})


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Fields OpenAI defines that tunelab does not implement: accepted at their neutral value,
# refused with a clear message otherwise.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None,), "echo": (None, False), "best_of": (None, 1),
               "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
               "suffix": (None,), "tools": (None, []), "tool_choice": (None, "none"), "response_format": (None,),
               "functions": (None,), "function_call": (None,), "parallel_tool_calls": (None,)}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, bool] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    user: str | None = None
    # OpenAI's, not implemented (see UNSUPPORTED)
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    best_of: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    suffix: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None


class CompletionBody(_Options):
    prompt: str | list[str]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class ChatBody(_Options):
    messages: list[Message] = Field(min_length=1)


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The name requests will use in their 'model' field.")
    path: str = Field(description="The adapter folder, relative to (or inside) the allowed directory.")


def create_app(loaded: Any, adapters: AdapterSet, settings: ServerSettings | None = None) -> Any:
    """The ASGI app. ``loaded`` is the base's LoadedModel (for its tokenizer and config)."""
    settings = settings or ServerSettings()
    tokenizer = loaded.tokenizer
    engine = BatchingEngine(adapters, tokenizer, max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
                            batch_wait_ms=settings.batch_wait_ms)
    context_window = getattr(loaded.model.config, "max_position_embeddings", None) or getattr(loaded.model.config, "n_positions", None)
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()  # the batch worker stops with the server

    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.adapters = engine, adapters
    created = int(time.time())

    # -- errors and auth --------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.type, exc.param, exc.code), exc.status)

    @app.exception_handler(AdapterError)
    async def adapter_error(request: Request, exc: AdapterError) -> JSONResponse:
        code = "model_not_found" if exc.status == 404 and "does not exist" in str(exc) else None
        return JSONResponse(error_body(str(exc), "invalid_request_error", "model" if code else None, code), exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "body"
        message = "the body is not valid JSON" if first["type"] == "json_invalid" else f"{where}: {first['msg']}"
        return JSONResponse(error_body(message, param=where if where != "body" else None), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail)), exc.status_code)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        given = request.headers.get("authorization", "")
        given = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if path.startswith("/admin"):
            if not settings.admin_token:
                return JSONResponse(error_body("the admin API is off: start the server with --admin-token", code="admin_disabled"), 403)
            if not hmac.compare_digest(given.encode(), settings.admin_token.encode()):
                return JSONResponse(error_body("a valid admin token is needed", "invalid_request_error", code="invalid_api_key"), 401)
        elif settings.api_keys and path.startswith("/v1") and not any(hmac.compare_digest(given.encode(), k.encode()) for k in settings.api_keys):
            return JSONResponse(error_body("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"), 401)
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse(error_body("send JSON (Content-Type: application/json)"), 415)
        return await call_next(request)

    # -- helpers ----------------------------------------------------------------------------
    def check(body: _Options) -> None:
        for name, neutral in UNSUPPORTED.items():
            value = getattr(body, name)
            if value not in neutral:
                raise ApiError(400, f"'{name}' is not supported by tunelab serve", param=name, code="unsupported_parameter")
        adapters.get(body.model)  # 404 model_not_found before queueing
        if body.stream_options and not body.stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")

    def limit_for(body: _Options, prompt_tokens: int, default: int) -> int:
        asked = body.max_completion_tokens or body.max_tokens
        if asked is not None and asked > settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens is {asked}; this server allows at most {settings.max_tokens_limit}", param="max_tokens")
        limit = asked or default
        if context_window and not loaded.is_encoder_decoder:
            room = context_window - prompt_tokens
            if room < 1:
                raise ApiError(400, f"the prompt has {prompt_tokens} tokens; the model's context window is {context_window}",
                               code="context_length_exceeded")
            if asked is not None and asked > room:
                raise ApiError(400, f"{prompt_tokens} prompt tokens + max_tokens {asked} exceed the context window of "
                               f"{context_window}", param="max_tokens", code="context_length_exceeded")
            limit = min(limit, room)
        return limit

    def generation_settings(body: _Options, max_tokens: int) -> GenerationSettings:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop: up to 4 non-empty strings", param="stop")
        sample = body.temperature > 0
        return GenerationSettings(max_new_tokens=max_tokens, do_sample=sample, temperature=body.temperature if sample else 1.0,
                                  top_k=0, top_p=body.top_p if sample else 1.0, stop=stop,
                                  seed=(body.seed if body.seed is not None else -1) if sample else 0)

    def submit(body: _Options, prompts: Sequence[list[int]], max_tokens: int, stream: asyncio.Queue | None) -> list[GenerationRequest]:
        gen = generation_settings(body, max_tokens)
        loop = asyncio.get_running_loop()
        requests = []
        for index, ids in enumerate(p for p in prompts for _ in range(body.n)):
            on_text = None
            if stream is not None:
                on_text = (lambda text, index=index: loop.call_soon_threadsafe(stream.put_nowait, (index, text)))
            requests.append(GenerationRequest(body.model, ids, gen, on_text=on_text))
        try:
            for request in requests:
                engine.submit(request)
        except QueueFull as exc:
            for request in requests:
                request.cancelled.set()
            raise ApiError(429, str(exc), "server_overloaded", code="queue_full") from None
        return requests

    async def wait_all(requests: list[GenerationRequest], http: Request) -> list[Any] | None:
        """The results, or None when the client went away first (its requests are then
        cancelled, freeing their places in the queue and the batch)."""
        futures = [asyncio.wrap_future(r.result) for r in requests]
        try:
            while True:
                done, _ = await asyncio.wait(futures, timeout=0.25)
                if len(done) == len(futures):
                    return [outcome(f) for f in futures]
                if await http.is_disconnected():
                    for request in requests:
                        request.cancelled.set()
                    return None
        except BaseException:
            for request in requests:
                request.cancelled.set()
            raise

    def outcome(future: asyncio.Future) -> Any:
        """A request's result; a failure in generation becomes an OpenAI-shaped error."""
        try:
            return future.result()
        except AdapterError as exc:  # its adapter was unloaded while it waited
            raise ApiError(exc.status, str(exc), param="model", code="model_not_found" if exc.status == 404 else None) from None
        except TunelabError as exc:  # the request asked for something the model cannot do
            raise ApiError(400, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error") from None

    def usage(prompts: Sequence[list[int]], n: int, outputs: Sequence[Any]) -> dict[str, int]:
        prompt_tokens = sum(len(p) for p in prompts)  # each prompt counted once, as OpenAI does for n > 1
        completion_tokens = sum(len(o.token_ids) for o in outputs)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}

    def check_count(prompts: int, n: int) -> None:
        if prompts * n > settings.max_prompts:
            raise ApiError(400, f"{prompts} prompts x n={n} is over this server's {settings.max_prompts} per request")

    async def run(body: _Options, http: Request, prompts: list[list[int]], max_tokens: int, chat: bool) -> Response:
        ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        stamp = int(time.time())
        if not body.stream:
            requests = submit(body, prompts, max_tokens, None)
            outputs = await wait_all(requests, http)
            if outputs is None:
                return Response(status_code=499)  # nobody is listening; nginx's 'client closed request'
            choices = [({"index": i, "message": {"role": "assistant", "content": o.text}, "logprobs": None,
                         "finish_reason": finish_reason(o)} if chat else
                        {"index": i, "text": o.text, "logprobs": None, "finish_reason": finish_reason(o)})
                       for i, o in enumerate(outputs)]
            return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion", "created": stamp,
                                 "model": body.model, "choices": choices, "usage": usage(prompts, body.n, outputs),
                                 "system_fingerprint": None})
        events: asyncio.Queue = asyncio.Queue()
        requests = submit(body, prompts, max_tokens, events)
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_stream(requests, events, ident, stamp, body.model, chat, include_usage, prompts, body.n),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _stream(requests: list[GenerationRequest], events: asyncio.Queue, ident: str, stamp: int, model: str,
                      chat: bool, include_usage: bool, prompts: list[list[int]], n: int) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({"id": ident, "object": kind, "created": stamp, "model": model,
                                           "choices": choices, **extra}).encode() + b"\n\n"

        def choice(index: int, text: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}

        futures = [asyncio.wrap_future(r.result) for r in requests]
        finished: set[int] = set()
        try:
            if chat:
                yield chunk([choice(i, None, None, role=True) for i in range(len(requests))])
            while len(finished) < len(requests):
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait([getter, *[f for i, f in enumerate(futures) if i not in finished]],
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    index, text = getter.result()
                    yield chunk([choice(index, text, None)])
                else:
                    getter.cancel()
                while not events.empty():  # text before a finish goes first
                    index, text = events.get_nowait()
                    yield chunk([choice(index, text, None)])
                for i, future in enumerate(futures):
                    if i not in finished and future.done():
                        finished.add(i)
                        yield chunk([choice(i, None if chat else "", finish_reason(outcome(future)))])
            if include_usage:
                yield chunk([], usage=usage(prompts, n, [f.result() for f in futures]))
        except ApiError as exc:  # the status line went out already: the error travels as an event
            yield b"data: " + json.dumps(error_body(str(exc), exc.type, exc.param, exc.code)).encode() + b"\n\n"
        finally:
            for request in requests:  # a client that went away frees its slots
                request.cancelled.set()
        yield b"data: [DONE]\n\n"

    # -- endpoints --------------------------------------------------------------------------
    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": a["name"], "object": "model", "created": created, "owned_by": "tunelab",
                                            "kind": a["kind"]} for a in adapters.describe()]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        adapter = adapters.get(name)
        return {"id": adapter.name, "object": "model", "created": created, "owned_by": "tunelab", "kind": adapter.kind}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: Request) -> Response:
        check(body)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts or any(not t for t in texts):
            raise ApiError(400, "prompt must be a non-empty string or list of them", param="prompt")
        check_count(len(texts), body.n)
        prompts = await run_in_threadpool(lambda: [tokenizer(t)["input_ids"] for t in texts])  # not on the event loop
        max_tokens = limit_for(body, max(len(p) for p in prompts), 16)  # OpenAI's default for completions
        return await run(body, http, prompts, max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: Request) -> Response:
        check(body)
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                    for m in body.messages]
        check_count(1, body.n)
        from jinja2 import TemplateError

        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:  # e.g. a template without system turns, or one that wants alternating roles
            raise ApiError(400, f"this model's chat template refuses these messages: {exc}", param="messages") from None
        prompt = (await run_in_threadpool(lambda: tokenizer(text, add_special_tokens=False)))["input_ids"]
        max_tokens = limit_for(body, len(prompt), settings.max_tokens_limit)
        return await run(body, http, [prompt], max_tokens, chat=True)

    @app.get("/admin/adapters")
    def list_adapters() -> dict[str, Any]:
        return {"adapters": adapters.describe(), "allowed_dir": None if adapters.allowed_dir is None else str(adapters.allowed_dir),
                "queue": engine.waiting, "stats": engine.stats}

    @app.post("/admin/adapters", status_code=201)
    def load_adapter(body: LoadBody) -> dict[str, Any]:
        adapter = adapters.add(body.name, body.path)
        return {"name": adapter.name, "kind": adapter.kind, "path": str(adapter.path)}

    @app.delete("/admin/adapters/{name}")
    def unload_adapter(name: str) -> dict[str, Any]:
        adapters.remove(name)
        return {"name": name, "unloaded": True}

    return BodyLimit(app, settings.max_body_bytes, error=lambda message: error_body(message))


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
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
