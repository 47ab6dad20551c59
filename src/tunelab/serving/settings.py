"""The server's settings, apart from the server so that the CLI can build its options
from them without importing torch or the web stack."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.errors import TunelabError
from tunelab.web import HttpLimits

MIN_ADMIN_TOKEN = 16


@dataclass
class ServerSettings:
    """Limits and keys of one server."""

    api_keys: tuple[str, ...] = field(default=(), repr=False, metadata={"help": "Accepted API keys (Authorization: Bearer KEY); none = no key needed."})
    admin_token: str | None = field(default=None, repr=False, metadata={"help": f"Token for /admin/adapters (at least {MIN_ADMIN_TOKEN} characters); unset = no admin endpoint."})
    max_tokens_limit: int = field(default=512, metadata={"help": "Largest max_tokens a request may ask for."})
    max_batch_size: int = field(default=16, metadata={"help": "Most requests generated together."})
    max_queue: int = field(default=256, metadata={"help": "Most requests waiting; more get 429."})
    max_prompts: int = field(default=32, metadata={"help": "Most prompts x n in one request."})
    max_messages: int = field(default=256, metadata={"help": "Most chat messages in one request."})
    max_prompt_chars: int = field(default=200_000, metadata={"help": "Most characters of prompt text (all prompts, or all messages) in one request."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "Most prompt tokens per prompt (default: the model's context window)."})
    max_stop_chars: int = field(default=128, metadata={"help": "Longest stop string."})
    batch_wait_ms: float = field(default=5.0, metadata={"help": "How long the batcher waits for companions of a request."})
    request_timeout: float = field(default=600.0, metadata={"help": "Seconds a request may wait for its answer (queue and generation) before a 504."})
    http: HttpLimits = field(default_factory=HttpLimits)

    def __post_init__(self) -> None:
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise TunelabError(f"the admin token must be at least {MIN_ADMIN_TOKEN} characters (e.g. from "
                               "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
        for secret in (*self.api_keys, *([self.admin_token] if self.admin_token else [])):
            if not secret or not secret.isascii() or not secret.isprintable() or " " in secret:
                raise TunelabError("API keys and the admin token must be non-empty printable ASCII without spaces "
                                   "(what an Authorization header can carry)")
