"""Batching for the server: requests wait in a bounded queue; one worker thread takes the
oldest, gathers every queued request that can share its batch (the same sampling
settings, and the same adapter, or any LoRA adapter or the base: those mix in one batch;
each keeps its own max_tokens), and runs them through tunelab's batched generation.
Streaming requests get their text as it is made; a cancelled request
(its client went away) leaves the batch at the next token.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.generation.batched import Generation, generate_from_ids
from tunelab.generation.settings import GenerationSettings
from tunelab.serving.adapters import AdapterError, AdapterSet


log = logging.getLogger("tunelab.serving")


class QueueFull(Exception):
    """The request queue is at its bound; the server answers 429."""


class WorkerStopped(Exception):
    """The batch worker is not running (it never stops on a batch's error); the server answers 503."""


@dataclass(eq=False)
class Request:
    adapter: str
    prompt_ids: list[int]
    settings: GenerationSettings  # sampling settings; max_new_tokens is this request's own limit
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    constraint: Any = None  # a tunelab.generation.constraint.Constraint (a JSON schema), or None
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: Future = field(default_factory=Future)

    def sampling_key(self) -> tuple:
        s = self.settings
        return (s.do_sample, s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.stop, s.seed)


class TextDeltas:
    """Turns a growing token list into text pieces that add up to the final text: holds
    back an unfinished UTF-8 character, trailing whitespace (the final text is stripped)
    and anything that could still become a stop string."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.tokens: list[int] = []
        self.sent = ""
        self.hold = max((len(s) for s in stop), default=0)

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):
            return ""
        cut = min((text.find(s) for s in self.stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        ready = text.rstrip()
        if self.hold and cut < 0:
            ready = ready[: max(len(self.sent), len(ready) - self.hold)]
        if not ready.startswith(self.sent):
            return ""  # the tokenizer re-spelled earlier text; the final flush settles it
        delta, self.sent = ready[len(self.sent) :], ready
        return delta

    def finish(self, final: str) -> str:
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


class BatchingEngine:
    """The queue and the worker thread that runs batches on the model. The worker never
    dies of a batch: whatever a batch raises fails that batch's requests (a batch of
    several is first retried one request at a time, so one bad request cannot take its
    companions down), and the worker goes on to the next."""

    def __init__(self, adapters: AdapterSet, tokenizer: Any, *, max_batch_size: int = 16, max_queue: int = 256,
                 batch_wait_ms: float = 5.0) -> None:
        self.adapters, self.tokenizer = adapters, tokenizer
        self.max_batch_size, self.batch_wait = max_batch_size, batch_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: queue.Queue[Request] = queue.Queue()  # bounded with `pending` in submit
        self.pending: deque[Request] = deque()
        self.seeds = itertools.count(1)
        self.stats = {"batches": 0, "requests": 0, "tokens": 0, "cancelled": 0, "failed": 0, "retried_alone": 0,
                      "worker_errors": 0}
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # the latest batches' sizes, for tuning
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="tunelab-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> Future:
        if not self._worker.is_alive():
            raise WorkerStopped("the generation worker has stopped; restart the server")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry later")
        self.queue.put_nowait(request)
        return request.result

    def close(self) -> None:
        self._stop.set()
        self._worker.join(timeout=30)

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + len(self.pending)

    def health(self) -> dict[str, Any]:
        return {"worker_alive": self._worker.is_alive(), "queue": self.waiting, **self.stats}

    # -- the worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._gather()
                with self.adapters.batch():  # no LoRA adapter comes or goes between forming and running a batch
                    batch = self._next_batch()
                    if batch:
                        self._generate(batch)
            except Exception:  # noqa: BLE001 - a bug here must not stop every later request
                self.stats["worker_errors"] += 1
                log.exception("batch worker: unexpected error; going on")

    def _gather(self) -> None:
        """Move queued requests to ``pending``: block for the first, then wait a few
        milliseconds for companions (concurrent clients arrive together), no longer
        than it takes to fill a batch."""
        if not self.pending:
            try:
                self.pending.append(self.queue.get(timeout=0.2))
            except queue.Empty:
                return
        deadline = time.monotonic() + self.batch_wait
        while len(self.pending) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                self.pending.append(self.queue.get(timeout=max(remaining, 0)) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                return

    def _next_batch(self) -> list[Request]:
        """The oldest request and every pending one that can share its batch."""
        for request in [r for r in self.pending if r.cancelled.is_set()]:
            self.pending.remove(request)
            self.stats["cancelled"] += 1
            request.result.cancel()
        if not self.pending:
            return []

        def key(request: Request) -> tuple:
            return self.adapters.batch_group(request.adapter), request.sampling_key()

        first = key(self.pending[0])
        batch = [r for r in self.pending if key(r) == first][: self.max_batch_size]
        for request in batch:
            self.pending.remove(request)
        return batch

    def _generate(self, batch: list[Request]) -> None:
        """Run a batch the worker formed; a request whose client already left (its future
        cancelled) is skipped."""
        batch = [r for r in batch if r.result.set_running_or_notify_cancel()]
        if batch:
            self._serve(batch, retry_alone=True)

    def _serve(self, batch: list[Request], *, retry_alone: bool) -> None:
        """Run one batch and answer its requests, whatever happens: routing, decoding and
        delivery all happen inside the guard."""
        deltas = [TextDeltas(self.tokenizer, r.settings.stop) if r.on_text else None for r in batch]
        try:
            routed, model, adapter_names = self._route(batch)
            if routed:
                kept = [d for r, d in zip(batch, deltas) if r in routed]
                self._deliver(routed, self._decode(routed, model, adapter_names, kept), kept)
        except Exception as exc:  # noqa: BLE001 - every waiting client must hear of it
            waiting = [(r, d) for r, d in zip(batch, deltas) if not r.result.done()]
            # find the request that broke the batch; the others still get their answers (a
            # stream that already sent text cannot start over, and fails instead)
            retry = [r for r, d in waiting if d is None or not d.sent] if retry_alone and len(waiting) > 1 else []
            if retry:
                log.warning("a batch of %d failed (%s: %s); retrying its requests one at a time",
                            len(waiting), type(exc).__name__, exc)
                self.stats["retried_alone"] += len(retry)
            for request, _ in waiting:
                if request in retry:
                    self._serve([request], retry_alone=False)
                else:
                    self._fail(request, exc)

    def _deliver(self, batch: list[Request], outputs: list[Generation], deltas: list[TextDeltas | None]) -> None:
        self.stats["batches"] += 1
        self.batch_sizes.append(len(batch))
        for request, output, delta in zip(batch, outputs, deltas):
            self.stats["requests"] += 1
            self.stats["cancelled"] += output.finish_reason == "cancelled"
            self.stats["tokens"] += len(output.token_ids)
            if delta is not None and output.finish_reason != "cancelled":
                self._send_text(request, delta.finish(output.text))
            if not request.result.done():
                request.result.set_result(output)

    def _fail(self, request: Request, exc: BaseException) -> None:
        """The request's client hears of it (the server logs the traceback under the
        error id it answers with)."""
        self.stats["failed"] += 1
        if not request.result.done():
            request.result.set_exception(exc)

    def _send_text(self, request: Request, piece: str) -> None:
        """Stream a piece; a client whose channel broke is treated as gone."""
        if not piece:
            return
        try:
            request.on_text(piece)
        except Exception:  # noqa: BLE001 - e.g. its event loop closed
            request.cancelled.set()

    def _route(self, batch: list[Request]) -> tuple[list[Request], Any, list[str] | None]:
        """The requests whose adapter is still loaded, their model, and for a mixed LoRA
        batch each row's adapter name. A request for an unloaded adapter fails alone."""
        routed, model, names = [], None, []
        for request in batch:
            try:
                model, name = self.adapters.route(request.adapter)
            except AdapterError as exc:
                self._fail(request, exc)
                continue
            routed.append(request)
            names.append(name)
        if not routed:
            return routed, None, None
        model, adapter_names = self.adapters.for_rows(model, names)
        return routed, model, adapter_names

    def _decode(self, batch: list[Request], model: Any, adapter_names: list[str] | None,
                deltas: list[TextDeltas | None]) -> list[Generation]:
        settings = batch[0].settings
        if settings.do_sample and settings.seed < 0:  # no seed asked for: a fresh one per batch
            settings = replace(settings, seed=next(self.seeds))
        settings = replace(settings, max_new_tokens=max(r.settings.max_new_tokens for r in batch), batch_size=len(batch))

        def on_token(row: int, token: int) -> bool:
            request = batch[row]
            if request.cancelled.is_set():
                return False
            if deltas[row] is not None:
                self._send_text(request, deltas[row].push(token))
            return True

        constraints = [r.constraint for r in batch]
        return generate_from_ids(model, self.tokenizer, [r.prompt_ids for r in batch], settings, progress=False,
                                 max_new_tokens=[r.settings.max_new_tokens for r in batch], on_token=on_token,
                                 adapter_names=adapter_names,
                                 constraints=constraints if any(c is not None for c in constraints) else None)


def finish_reason(output: Generation) -> str:
    """OpenAI's names: 'stop' (end of sequence or a stop string) or 'length'."""
    return "length" if output.finish_reason == "length" else "stop"
