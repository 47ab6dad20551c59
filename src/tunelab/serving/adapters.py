"""Many adapters over one base model in memory.

Each adapter gets a *view* of the base: a copy of the module tree whose parameters and
buffers are the base's own tensors (copy.deepcopy with every tensor in the memo), so a
view costs Python objects and the adapter's weights, not a second model. The adapter is
applied to its view as tunelab applies it offline (peft for IA3, prompt and prefix
tuning; tunelab's loader for bottleneck adapters and selective fine-tunes), so switching
adapters per request is picking a view: nothing is reloaded, merged or unmerged.

LoRA adapters all go into one view, as named peft adapters, so requests for different
LoRA adapters and for the base share a batch: peft's mixed-batch forward sends each row
through its own adapter. (A LoRA variant that path cannot take, such as DoRA, gets a
view of its own.)
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.models.adapters import adapter_kind, check_safetensors, load_artifact, read_artifact

BASE = "base"


class AdapterError(TunelabError):
    """A refused adapter operation; ``status`` is the HTTP status the server answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Adapter:
    name: str
    path: Path | None
    kind: str
    model: Any  # the view with the adapter applied (the base itself for "base"; the shared view for LoRA)
    lora_name: str | None = None  # a LoRA adapter's name inside the shared LoRA view (see AdapterSet.route)


def shared_view(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s modules that shares every parameter and buffer with it."""
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def _unshare(view: torch.nn.Module, names: list[str]) -> None:
    """Give the view private copies of the named parameters, so an artifact that writes
    into existing weights (a selective fine-tune) changes the view, never the base. Every
    place that holds the same tensor (tied input and output embeddings) gets the same copy."""
    places: dict[int, list[str]] = {}
    for name, parameter in view.named_parameters(remove_duplicate=False):
        places.setdefault(id(parameter), []).append(name)
    owners = dict(view.named_parameters(remove_duplicate=False))
    for name in names:
        parameter = owners.get(name)
        if parameter is None:
            continue  # a parameter the artifact adds (a bottleneck adapter's own layers)
        copy_ = torch.nn.Parameter(parameter.detach().clone(), requires_grad=False)
        for place in places[id(parameter)]:
            module_name, _, leaf = place.rpartition(".")
            setattr(view.get_submodule(module_name), leaf, copy_)


def resolve_inside(path: str | Path, root: Path) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved with symlinks followed; it must
    stay inside ``root``: no '..' and no symlink out."""
    root = root.resolve()
    candidate = Path(path)
    if "\x00" in str(path):
        raise AdapterError("an adapter path cannot hold a NUL byte", 400)
    if ".." in candidate.parts:
        raise AdapterError(f"adapter path {path!s} contains '..'", 403)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise AdapterError(f"adapter path {path!s} resolves outside the allowed directory {root}", 403)
    if not resolved.is_dir():
        raise AdapterError(f"no adapter folder at {path!s} inside {root}", 404)
    for item in resolved.rglob("*"):  # a file inside may be a link out, too
        if not item.resolve().is_relative_to(root):
            raise AdapterError(f"{item.relative_to(resolved)} in adapter {path!s} links outside the allowed directory", 403)
    return resolved


@contextmanager
def snapshot_inside(path: str | Path, root: Path) -> Iterator[Path]:
    """A private copy of the adapter folder ``path`` inside ``root``, for loading. The
    checks of ``resolve_inside`` alone would race: a file swapped for a symlink out of
    ``root`` between the check and the load would be read. Here each file is opened
    once, the opened file itself is checked (its real path, and that it is a regular
    file), and its bytes are copied from that same descriptor; the load reads the copy."""
    import shutil
    import tempfile

    folder = resolve_inside(path, root)
    files = [item for item in sorted(folder.rglob("*")) if not item.is_dir()]
    if len(files) > MAX_ADAPTER_FILES:
        raise AdapterError(f"adapter {path!s} holds {len(files)} files; an adapter folder holds a few", 422)
    copy_dir = Path(tempfile.mkdtemp(prefix="tunelab-adapter-"))
    try:
        budget = [MAX_ADAPTER_BYTES]
        for item in files:
            try:
                _copy_checked(item, root.resolve(), copy_dir / item.relative_to(folder), budget)
            except OSError as exc:
                raise AdapterError(f"{item.relative_to(folder)} in adapter {path!s} could not be read: "
                                   f"{exc.strerror or exc}", 403) from None
        yield copy_dir
    finally:
        shutil.rmtree(copy_dir, ignore_errors=True)


MAX_ADAPTER_FILES = 256  # a peft or tunelab adapter folder holds a handful: a config, weights, a tokenizer
MAX_ADAPTER_BYTES = 8 << 30  # what one admin load may copy (a selective fine-tune of a large model included)


def _copy_checked(item: Path, root: Path, target: Path, budget: list[int]) -> None:
    """Copy one file from a descriptor that was checked: a regular file (not a FIFO or
    device), with one name only (a hard link can reach a file outside ``root``), whose
    real path is inside ``root``; ``budget`` bounds the bytes copied."""
    import shutil
    import stat

    flags = os.O_RDONLY | os.O_NONBLOCK  # a FIFO planted in the folder must not hang the load
    if not _CAN_CHECK_FD:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(item, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1 or not _opened_path(fd, item).is_relative_to(root):
            raise AdapterError(f"{item.name} is not a file inside the allowed directory {root} (links are not followed)", 403)
        budget[0] -= info.st_size
        if budget[0] < 0:
            raise AdapterError(f"the adapter is over {MAX_ADAPTER_BYTES >> 30} GB", 422)
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.dup(fd), "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    finally:
        os.close(fd)


_CAN_CHECK_FD = Path("/proc/self/fd").is_dir()


def _opened_path(fd: int, opened: Path) -> Path:
    """The real path of an open file: Linux tells it through /proc. Elsewhere the file was
    opened without following a final symlink, so its path is the one asked for (a
    directory swapped for a link in between is not caught there: serve from Linux)."""
    return Path(os.readlink(f"/proc/self/fd/{fd}")) if _CAN_CHECK_FD else opened.resolve()


class AdapterSet:
    """The base model and its named adapters. Thread-safe: the server's batch worker
    reads while the admin endpoint adds or removes."""

    def __init__(self, model: Any, *, allowed_dir: str | Path | None = None) -> None:
        self.base = model.eval()
        self.allowed_dir = None if allowed_dir is None else Path(allowed_dir).resolve()
        self._adapters: dict[str, Adapter] = {BASE: Adapter(BASE, None, "base", self.base)}
        self._registry = threading.Lock()  # the name -> adapter table; held for moments only
        # The shared LoRA view changes only between batches: the batch worker holds
        # _lora_lock while it forms and runs one, and a change waiting for it goes first.
        self._lora_lock = threading.Lock()
        self._changes_waiting = 0
        self._lora: Any = None  # the view that holds every mixable LoRA adapter
        self._lora_ids = itertools.count()

    def names(self) -> list[str]:
        with self._registry:
            return list(self._adapters)

    def describe(self) -> list[dict[str, Any]]:
        with self._registry:
            return [{"name": a.name, "kind": a.kind, "path": None if a.path is None else str(a.path)} for a in self._adapters.values()]

    def get(self, name: str) -> Adapter:
        with self._registry:
            adapter = self._adapters.get(name)
        if adapter is None:
            raise AdapterError(f"the model '{name}' does not exist; available: {', '.join(self.names())}", 404)
        return adapter

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Held by the batch worker while it forms and runs a batch: no LoRA adapter comes or
        goes meanwhile. A waiting load or unload goes before the next batch."""
        while self._changes_waiting:
            time.sleep(0.002)
        with self._lora_lock:
            yield

    @contextmanager
    def _changing_lora(self) -> Iterator[None]:
        with self._registry:
            self._changes_waiting += 1
        try:
            with self._lora_lock:
                yield
        finally:
            with self._registry:
                self._changes_waiting -= 1

    def route(self, name: str) -> tuple[Any, str | None]:
        """The model that serves ``name``, and the name to give its rows in a mixed LoRA
        batch (``adapter_names`` of generate_from_ids), or None for a model of its own.
        Use this, not ``get(name).model``: the shared LoRA view serves several adapters."""
        with self._registry:
            adapter = self._adapters.get(name)
            lora = self._lora
        if adapter is None:
            return self.get(name).model, None  # raises the 404
        if adapter.lora_name is not None:
            return adapter.model, adapter.lora_name
        if adapter.name == BASE and lora is not None:
            from tunelab.generation.batched import BASE_ADAPTER

            return lora, BASE_ADAPTER
        return adapter.model, None

    def for_rows(self, model: Any, names: list[str | None]) -> tuple[Any, list[str] | None]:
        """The model and per-row adapter names for a batch routed to ``model``. A batch on
        the shared LoRA view with one adapter runs it as the active adapter (peft's plain
        forward; the mixed one costs gathers and scatters in every LoRA layer), and a batch
        of base requests runs on the base itself. Call it inside ``batch()``."""
        if names[0] is None:
            return model, None
        if len(set(names)) > 1:
            return model, list(names)  # type: ignore[arg-type]
        from tunelab.generation.batched import BASE_ADAPTER

        if names[0] == BASE_ADAPTER:
            return self.base, None
        if model.active_adapter != names[0]:
            model.set_adapter(names[0], inference_mode=True)
        return model, None

    def batch_group(self, name: str) -> tuple[str, ...]:
        """Requests of one group can share a batch: the mixable LoRA adapters and the base
        form one (through the shared LoRA view); any other adapter is a group of its own."""
        with self._registry:
            adapter = self._adapters.get(name)
            if adapter is not None and (adapter.lora_name is not None or (name == BASE and self._lora is not None)):
                return ("lora",)
            return ("adapter", name)

    def add(self, name: str, path: str | Path, *, trusted: bool = False) -> Adapter:
        """Load an adapter under ``name``. Paths from the admin API (``trusted=False``)
        must resolve inside the allowed directory; the operator's command line is trusted."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(name) > 64:
            raise AdapterError("an adapter name is 1-64 letters, digits, '-', '_' or '.'", 422)
        if name in self.names():
            raise AdapterError(f"an adapter named '{name}' is already loaded; unload it first", 409)
        if trusted:
            folder = Path(path).resolve()
            if not folder.is_dir():
                raise AdapterError(f"no adapter folder at {path}", 404)
            return self._add(name, folder, folder)
        if self.allowed_dir is None:
            raise AdapterError("loading adapters at run time is off: start the server with --adapter-dir", 403)
        with snapshot_inside(path, self.allowed_dir) as copy:
            return self._add(name, copy, resolve_inside(path, self.allowed_dir))

    def _add(self, name: str, folder: Path, shown: Path) -> Adapter:
        """Load the adapter in ``folder``; ``shown`` is the path the operator knows it by."""
        with _as_adapter_error(shown):
            kind = adapter_kind(folder)
            check_safetensors(folder)
            if kind == "lora" and mixable_lora(_peft_config(folder)):
                return self._add_lora(name, folder, shown)
            model = self._load(folder, kind)
        adapter = Adapter(name, shown, kind, model)
        self._register(adapter)
        return adapter

    def _register(self, adapter: Adapter) -> None:
        with self._registry:
            if adapter.name in self._adapters:
                raise AdapterError(f"an adapter named '{adapter.name}' is already loaded; unload it first", 409)
            self._adapters[adapter.name] = adapter

    def _add_lora(self, name: str, folder: Path, shown: Path) -> Adapter:
        from peft import PeftModel

        key = f"lora{next(self._lora_ids)}"  # peft's names may not hold '.', ours may
        with self._changing_lora():
            if name in self.names():
                raise AdapterError(f"an adapter named '{name}' is already loaded; unload it first", 409)
            if self._lora is None:
                lora = PeftModel.from_pretrained(shared_view(self.base), str(folder), adapter_name=key).eval()
            else:
                lora = self._lora
                try:
                    lora.load_adapter(str(folder), adapter_name=key)
                except Exception:
                    if key in lora.peft_config:  # half loaded: take it out again
                        lora.delete_adapter(key)
                        lora.set_adapter(next(iter(lora.peft_config)), inference_mode=True)
                    raise
            adapter = Adapter(name, shown, "lora", lora, key)
            self._register(adapter)
            self._lora = lora
        return adapter

    def _load(self, folder: Path, kind: str) -> Any:
        view = shared_view(self.base)
        if kind in ("selective", "adapter"):
            _unshare(view, list(read_artifact(folder)[1]))
        elif _peft_config(folder).get("bias", "none") != "none":  # peft writes trained biases into the layers
            _unshare(view, [n for n, _ in view.named_parameters() if n.endswith(".bias")])
        return load_artifact(view, folder).eval()

    def remove(self, name: str) -> None:
        if name == BASE:
            raise AdapterError("the base model cannot be unloaded", 409)
        adapter = self.get(name)
        if adapter.lora_name is None:
            with self._registry:
                if self._adapters.pop(name, None) is None:
                    raise AdapterError(f"no adapter named '{name}' is loaded", 404)
            return
        with self._changing_lora():
            with self._registry:
                if self._adapters.pop(name, None) is None:
                    raise AdapterError(f"no adapter named '{name}' is loaded", 404)
                rest = [a.lora_name for a in self._adapters.values() if a.lora_name is not None]
            if rest:
                self._lora.delete_adapter(adapter.lora_name)
                self._lora.set_adapter(rest[0], inference_mode=True)  # peft may leave the deleted one active
            else:
                self._lora = None  # the last LoRA adapter: the whole view goes


def _peft_config(folder: Path) -> dict[str, Any]:
    import json

    path = folder / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def mixable_lora(config: dict[str, Any]) -> bool:
    """Whether peft's mixed-batch forward takes this LoRA adapter. DoRA refuses
    ``adapter_names``; modules_to_save, trainable tokens and biases change layers outside
    LoRA's own; aLoRA needs offsets; parameter targets have no mixed path. Those get a
    view of their own instead."""
    return (not config.get("use_dora") and not config.get("modules_to_save") and config.get("bias", "none") == "none"
            and not config.get("target_parameters") and not config.get("alora_invocation_tokens")
            and not config.get("trainable_token_indices") and not config.get("layer_replication"))


@contextmanager
def _as_adapter_error(folder: Path) -> Iterator[None]:
    """A broken or foreign adapter folder is the caller's input: 422, not a crash."""
    try:
        yield
    except AdapterError:
        raise
    except TunelabError as exc:
        raise AdapterError(str(exc), 422) from None
    except Exception as exc:  # noqa: BLE001
        raise AdapterError(f"{folder}: cannot be loaded onto this base model: {type(exc).__name__}: {exc}", 422) from None
