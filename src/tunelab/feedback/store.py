"""The labeling database: prompts, their completions, labelers and their judgements.

SQLite in WAL mode, so the web app's readers never wait for its one writer; every
submission is one transaction; a submission carries a client-made id, so a retried POST
(a timeout, a server restart) is stored once. The schema version lives in
``PRAGMA user_version`` and older databases are migrated forward on open.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError


class LabelError(TunelabError):
    """A request the labeling store refuses; ``status`` is the HTTP status the app answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# Each entry moves the schema one version forward; never edit one that has shipped.
MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
    CREATE TABLE prompts (
        id INTEGER PRIMARY KEY, text TEXT NOT NULL, source_id TEXT, origin TEXT, created_at REAL NOT NULL);
    CREATE TABLE completions (
        id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        position INTEGER NOT NULL, text TEXT NOT NULL, UNIQUE (prompt_id, position));
    CREATE TABLE judgements (
        id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id),
        user_id INTEGER NOT NULL REFERENCES users(id), ranks TEXT NOT NULL,
        submission_id TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        UNIQUE (prompt_id, user_id));
    CREATE TABLE leases (
        prompt_id INTEGER NOT NULL REFERENCES prompts(id), user_id INTEGER NOT NULL REFERENCES users(id),
        expires_at REAL NOT NULL, PRIMARY KEY (prompt_id, user_id));
    CREATE INDEX judgements_by_prompt ON judgements(prompt_id);
    """,
    # 2: how long a labeler spent on a judgement (labeler QA: too fast to have read it?)
    "ALTER TABLE judgements ADD COLUMN duration_ms INTEGER;",
    # 3: when a prompt was handed out (the server measures a judgement's duration from it);
    #    revoked users keep their judgements but can no longer sign in
    """
    ALTER TABLE leases ADD COLUMN leased_at REAL;
    ALTER TABLE users ADD COLUMN revoked_at REAL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

DEFAULT_SETTINGS = {
    "criterion": "Rank the completions from best (1) to worst: which answer is the most helpful, honest and harmless?",
    "labels_per_prompt": "3",
}
LEASE_SECONDS = 600  # a prompt handed to a labeler is held for them this long


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool
    revoked: bool = False


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["name"], bool(row["is_admin"]), row["revoked_at"] is not None)


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with WAL, foreign keys and a busy timeout, migrated to the current schema."""
    connection = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")  # an acknowledged submission survives a power cut
    connection.execute("PRAGMA foreign_keys=ON")
    migrate(connection)
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found. Each step is one
    transaction (SQLite's DDL is transactional), so a failed step leaves the previous
    version intact, and two processes opening a new database never both migrate it."""
    with transaction(connection):
        found = connection.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise LabelError(f"this labeling database has schema version {found}; this tunelab knows up to "
                             f"{SCHEMA_VERSION}: upgrade tunelab")
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
        if found == 0:
            connection.executemany("INSERT OR IGNORE INTO settings VALUES (?, ?)", DEFAULT_SETTINGS.items())
    return found


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so two submissions never
    both read 'not labelled yet' and then both write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class LabelStore:
    """Every read and write the CLI and the web app make. One instance per thread."""

    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        path = Path(path)
        if not create and not path.is_file():
            raise LabelError(f"no labeling database at {path} (create one with `tunelab label prepare`)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    # -- settings ---------------------------------------------------------------------------
    def settings(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.db.execute("SELECT key, value FROM settings")}

    def set_setting(self, key: str, value: str) -> None:
        if key == "labels_per_prompt" and (not value.isdigit() or int(value) < 1):
            raise LabelError("labels_per_prompt must be a whole number >= 1")
        with transaction(self.db):
            self.db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def labels_per_prompt(self) -> int:
        return int(self.settings()["labels_per_prompt"])

    # -- users ------------------------------------------------------------------------------
    def add_user(self, name: str, *, admin: bool = False) -> str:
        """Create a labeler (or admin) and return their token; only its hash is stored."""
        name = name.strip()
        if not name or len(name) > 64:
            raise LabelError("a user name must be 1-64 characters")
        token = secrets.token_urlsafe(24)
        try:
            with transaction(self.db):
                self.db.execute("INSERT INTO users (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                                (name, hash_token(token), int(admin), time.time()))
        except sqlite3.IntegrityError:
            raise LabelError(f"a user named {name!r} already exists") from None
        return token

    def users(self) -> list[User]:
        return [_user(r) for r in self.db.execute("SELECT * FROM users ORDER BY id")]

    def user_for_token(self, token: str | None) -> User | None:
        if not token or len(token) > 200:
            return None
        row = self.db.execute("SELECT * FROM users WHERE token_hash = ? AND revoked_at IS NULL", (hash_token(token),)).fetchone()
        return None if row is None else _user(row)

    def revoke(self, name: str) -> None:
        """The user's token stops working at once (a signed-in browser too: the cookie holds
        the token); their judgements stay. ``rotate`` gives them a new one."""
        with transaction(self.db):
            self._replace_token(name, "revoked:" + secrets.token_hex(16), revoked=True)
            self.db.execute("DELETE FROM leases WHERE user_id = (SELECT id FROM users WHERE name = ?)", (name,))

    def rotate(self, name: str) -> str:
        """A new token for the user (the old one stops working); returns it. Also lifts a revocation."""
        token = secrets.token_urlsafe(24)
        with transaction(self.db):
            self._replace_token(name, hash_token(token), revoked=False)
        return token

    def _replace_token(self, name: str, token_hash: str, *, revoked: bool) -> None:
        cursor = self.db.execute("UPDATE users SET token_hash = ?, revoked_at = ? WHERE name = ?",
                                 (token_hash, time.time() if revoked else None, name))
        if cursor.rowcount == 0:
            known = ", ".join(u.name for u in self.users()) or "none"
            raise LabelError(f"no user named {name!r} (users: {known})", 404)

    # -- prompts and completions ------------------------------------------------------------
    def add_prompt(self, text: str, completions: Sequence[str], *, source_id: str | None = None,
                   origin: dict[str, Any] | None = None) -> int:
        if not text.strip():
            raise LabelError("empty prompt")
        if len(completions) < 2:
            raise LabelError("a prompt needs at least 2 completions to rank")
        if any(not isinstance(c, str) or not c.strip() for c in completions):
            raise LabelError("a completion is empty")
        with transaction(self.db):
            cursor = self.db.execute("INSERT INTO prompts (text, source_id, origin, created_at) VALUES (?, ?, ?, ?)",
                                     (text, source_id, json.dumps(origin) if origin else None, time.time()))
            prompt_id = cursor.lastrowid
            self.db.executemany("INSERT INTO completions (prompt_id, position, text) VALUES (?, ?, ?)",
                                [(prompt_id, i, c) for i, c in enumerate(completions)])
        return int(prompt_id)

    def prompt(self, prompt_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM prompts WHERE id = ?", (prompt_id,)).fetchone()
        if row is None:
            raise LabelError(f"no prompt {prompt_id}", 404)
        completions = self.db.execute("SELECT id, text FROM completions WHERE prompt_id = ? ORDER BY position", (prompt_id,))
        return {"id": row["id"], "text": row["text"], "source_id": row["source_id"],
                "completions": [{"id": c["id"], "text": c["text"]} for c in completions]}

    def count_prompts(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]

    # -- assignment -------------------------------------------------------------------------
    def next_prompt(self, user: User) -> dict[str, Any] | None:
        """The next prompt for this labeler: one they hold a lease on, else the first that
        they have not judged and that has fewer than N judgements plus others' live leases.
        The lease keeps N labelers from all being handed the same last slot; a submission
        is accepted only under a live lease (see ``submit``)."""
        now = time.time()
        with transaction(self.db):
            self._drop_dead_leases(now)
            held = self.db.execute(
                "SELECT l.prompt_id FROM leases l WHERE l.user_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM judgements j WHERE j.prompt_id = l.prompt_id AND j.user_id = l.user_id)",
                (user.id,)).fetchone()
            if held is not None:
                prompt_id = held["prompt_id"]
            else:
                row = self.db.execute(
                    """SELECT p.id FROM prompts p
                       WHERE NOT EXISTS (SELECT 1 FROM judgements j WHERE j.prompt_id = p.id AND j.user_id = :user)
                         AND (SELECT COUNT(*) FROM judgements j WHERE j.prompt_id = p.id)
                           + (SELECT COUNT(*) FROM leases l WHERE l.prompt_id = p.id AND l.user_id != :user) < :limit
                       ORDER BY (SELECT COUNT(*) FROM judgements j WHERE j.prompt_id = p.id) DESC, p.id
                       LIMIT 1""",
                    {"user": user.id, "limit": self.labels_per_prompt}).fetchone()
                if row is None:
                    return None
                prompt_id = row["id"]
            # a renewed lease keeps its start: the judgement's duration counts from the first hand-out
            self.db.execute("INSERT INTO leases (prompt_id, user_id, expires_at, leased_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT(prompt_id, user_id) DO UPDATE SET expires_at = excluded.expires_at",
                            (prompt_id, user.id, now + LEASE_SECONDS, now))
        return self.prompt(prompt_id)

    def _drop_dead_leases(self, now: float) -> None:
        """Expired leases, and every lease on a prompt that is already full (it is never
        handed out again)."""
        self.db.execute("DELETE FROM leases WHERE expires_at < ?", (now,))
        self.db.execute("DELETE FROM leases WHERE prompt_id IN (SELECT prompt_id FROM judgements GROUP BY prompt_id "
                        "HAVING COUNT(*) >= ?)", (self.labels_per_prompt,))

    def _live_lease(self, user: User, prompt_id: int, now: float) -> sqlite3.Row:
        """The labeler's live lease on the prompt. An unknown prompt and someone else's get
        the same answer, so ids cannot be probed."""
        lease = self.db.execute("SELECT * FROM leases WHERE prompt_id = ? AND user_id = ? AND expires_at >= ?",
                                (prompt_id, user.id, now)).fetchone()
        if lease is None:
            raise LabelError(f"no prompt {prompt_id} is waiting for you (a prompt is held for you for "
                             f"{LEASE_SECONDS // 60} minutes after GET /api/next hands it out); fetch the next one", 404)
        return lease

    # -- judgements -------------------------------------------------------------------------
    def _check_ranks(self, prompt_id: int, ranks: dict[str, int | None]) -> dict[int, int | None]:
        """A ranking names every completion of the prompt exactly once, each with a rank
        from 1 (best) to k or null ('not relevant'); equal ranks are ties."""
        shown = [c["id"] for c in self.prompt(prompt_id)["completions"]]
        if not isinstance(ranks, dict):
            raise LabelError("ranks must be an object {completion id: rank or null}", 422)
        if not all(isinstance(k, str) and k.isdigit() and str(int(k)) == k for k in ranks):
            raise LabelError("ranks' keys must be completion ids (as written in the prompt's completions)", 422)
        given = {int(k): v for k, v in ranks.items()}
        if sorted(given) != sorted(shown):
            missing, extra = sorted(set(shown) - set(given)), sorted(set(given) - set(shown))
            raise LabelError(f"ranks must name each shown completion once: missing {missing}, not shown {extra}", 422)
        k = len(shown)
        for completion, rank in given.items():
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k):
                raise LabelError(f"completion {completion}: rank must be a whole number from 1 to {k}, or null for "
                                 f"'not relevant'; got {rank!r}", 422)
        if all(r is None for r in given.values()):
            raise LabelError("every completion is flagged not relevant; rank at least one", 422)
        return given

    def submit(self, user: User, prompt_id: int, ranks: dict[str, int | None], submission_id: str,
               duration_ms: int | None = None) -> dict[str, Any]:
        """Store a judgement once, only for a prompt leased to this labeler right now. A
        repeat of an acknowledged submission id returns the stored one with
        ``duplicate: true``; a second judgement of the same prompt by the same labeler is
        refused (change it with ``update`` instead). The judgement's duration is measured
        here, from the lease; ``duration_ms`` from the client is ignored (kept for old
        clients)."""
        if not isinstance(submission_id, str) or not 8 <= len(submission_id) <= 64:
            raise LabelError("submission_id must be a string of 8-64 characters (a fresh UUID per submission)", 422)
        now = time.time()
        with transaction(self.db):
            earlier = self.db.execute("SELECT * FROM judgements WHERE submission_id = ?", (submission_id,)).fetchone()
            if earlier is not None:
                if earlier["user_id"] != user.id or earlier["prompt_id"] != prompt_id:
                    raise LabelError("this submission_id was used for another judgement", 409)
                return {**self._judgement(earlier), "duplicate": True}
            if self.db.execute("SELECT 1 FROM judgements WHERE prompt_id = ? AND user_id = ?", (prompt_id, user.id)).fetchone():
                raise LabelError(f"you already judged prompt {prompt_id}; change it with PUT /api/judgements/{prompt_id}", 409)
            lease = self._live_lease(user, prompt_id, now)
            given = self._check_ranks(prompt_id, ranks)
            count = self.db.execute("SELECT COUNT(*) FROM judgements WHERE prompt_id = ?", (prompt_id,)).fetchone()[0]
            if count >= self.labels_per_prompt:
                raise LabelError(f"prompt {prompt_id} already has its {count} judgements", 409)
            started = lease["leased_at"] if lease["leased_at"] is not None else lease["expires_at"] - LEASE_SECONDS
            cursor = self.db.execute(
                "INSERT INTO judgements (prompt_id, user_id, ranks, submission_id, created_at, updated_at, duration_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, user.id, json.dumps({str(k): v for k, v in given.items()}), submission_id, now, now,
                 max(0, round((now - started) * 1000))))
            self.db.execute("DELETE FROM leases WHERE prompt_id = ? AND user_id = ?", (prompt_id, user.id))
            self._drop_dead_leases(now)  # the prompt may be full now: nobody else gets to hold it
            row = self.db.execute("SELECT * FROM judgements WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return {**self._judgement(row), "duplicate": False}

    def update(self, user: User, prompt_id: int, ranks: dict[str, int | None]) -> dict[str, Any]:
        """Change the labeler's own judgement of a prompt (nobody else's)."""
        with transaction(self.db):
            if not self.db.execute("SELECT 1 FROM judgements WHERE prompt_id = ? AND user_id = ?", (prompt_id, user.id)).fetchone():
                raise LabelError(f"you have no judgement of prompt {prompt_id}", 404)  # unknown and foreign alike
            given = self._check_ranks(prompt_id, ranks)
            self.db.execute("UPDATE judgements SET ranks = ?, updated_at = ? WHERE prompt_id = ? AND user_id = ?",
                            (json.dumps({str(k): v for k, v in given.items()}), time.time(), prompt_id, user.id))
        return self.judgements(user=user, prompt_id=prompt_id)[0]

    @staticmethod
    def _judgement(row: sqlite3.Row) -> dict[str, Any]:
        return {"prompt_id": row["prompt_id"], "user_id": row["user_id"], "submission_id": row["submission_id"],
                "ranks": json.loads(row["ranks"]), "created_at": row["created_at"], "updated_at": row["updated_at"],
                "duration_ms": row["duration_ms"]}

    def judgements(self, *, user: User | None = None, prompt_id: int | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM judgements WHERE 1", []
        if user is not None:
            query, args = query + " AND user_id = ?", args + [user.id]
        if prompt_id is not None:
            query, args = query + " AND prompt_id = ?", args + [prompt_id]
        return [self._judgement(r) for r in self.db.execute(query + " ORDER BY id", args)]

    # -- progress ---------------------------------------------------------------------------
    def progress(self, user: User | None = None) -> dict[str, int]:
        prompts = self.count_prompts()
        done = self.db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
        full = self.db.execute("SELECT COUNT(*) FROM (SELECT prompt_id FROM judgements GROUP BY prompt_id "
                               "HAVING COUNT(*) >= ?)", (self.labels_per_prompt,)).fetchone()[0]
        result = {"prompts": prompts, "judgements": done, "wanted": prompts * self.labels_per_prompt, "prompts_complete": full}
        if user is not None:
            result["mine"] = self.db.execute("SELECT COUNT(*) FROM judgements WHERE user_id = ?", (user.id,)).fetchone()[0]
        return result

    def rankings(self) -> Iterator[dict[str, Any]]:
        """Every judgement as a ranking row in the alignment format (completions in their
        stored order, ranks aligned with them), with the labeler's name in the id."""
        names = {u.id: u.name for u in self.users()}
        for row in self.db.execute("SELECT * FROM judgements ORDER BY prompt_id, id").fetchall():
            prompt = self.prompt(row["prompt_id"])
            ranks = json.loads(row["ranks"])
            yield {"id": f"{prompt['id']}:{names[row['user_id']]}", "prompt": prompt["text"],
                   "completions": [c["text"] for c in prompt["completions"]],
                   "ranks": [ranks[str(c["id"])] for c in prompt["completions"]]}
