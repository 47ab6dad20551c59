"""The labeling web app: server-rendered pages, a JSON API, a little JavaScript.

Every request needs a labeler's token: as ``Authorization: Bearer TOKEN`` (scripts) or
in the HttpOnly cookie the sign-in page sets (browsers). Pages escape every prompt and
completion (Jinja autoescape) and forbid inline scripts by CSP, so a completion holding
``<script>`` is shown as text. Every request that changes something refuses a
cross-site origin (a form on another site posting to /login or /logout). Bodies and
connections are bounded by tunelab.web's guard.
"""

from __future__ import annotations

import random
import threading
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser

from tunelab.feedback.report import labeling_report
from tunelab.feedback.store import LabelError, LabelStore, User
from tunelab.web import HttpLimits, Refusal, RequestGuard, internal_error_message, log_internal_error

HERE = Path(__file__).parent
MAX_ID = 2**63 - 1  # SQLite's INTEGER
COOKIE = "tunelab_label_token"
SECURE_COOKIE = "__Host-" + COOKIE  # with --secure-cookie: HTTPS only, this host only, path /
MAX_BODY_BYTES = 64 * 1024
HSTS = "max-age=31536000"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
SIGN_IN = "sign in: send 'Authorization: Bearer TOKEN' (from `tunelab label users add`)"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_id: int = Field(ge=1, le=MAX_ID, description="The prompt judged.")
    submission_id: str = Field(description="A fresh UUID per judgement; resend the same one when retrying.")
    # strict: "1", 1.0 and true are not ranks
    ranks: dict[str, StrictInt | None] = Field(description="{completion id: rank (1 = best, equal = tie) or null (not relevant)}.")
    duration_ms: int | None = Field(default=None, ge=0, le=MAX_ID, description="Ignored: the server measures the time from the lease.")


class Revision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ranks: dict[str, StrictInt | None]


class _Unauthorized(Exception):
    pass


def cross_site(request: Request) -> bool:
    """A request a page on another site made the browser send. Browsers that send
    Sec-Fetch-Site say so there (it is authoritative: a same-origin form under
    ``Referrer-Policy: no-referrer`` sends ``Origin: null``); for older ones, an Origin
    that is not this host. Scripts send neither header, and are let through."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    netloc = origin.partition("://")[2]
    return not netloc or netloc.lower() != request.headers.get("host", "").lower()  # "null" has no netloc


def create_app(db: str | Path, *, max_body_bytes: int = MAX_BODY_BYTES, secure_cookie: bool = False,
               http: HttpLimits | None = None) -> Any:
    """The ASGI app over one labeling database (which must exist). ``secure_cookie``: the
    app is served over HTTPS (behind a TLS proxy): the cookie is ``__Host-``-prefixed and
    Secure, and HSTS is sent."""
    LabelStore(db).close()  # fail now, with a clear message, if the database is missing or too new
    cookie = SECURE_COOKIE if secure_cookie else COOKIE
    limits = http or HttpLimits(max_body_bytes=max_body_bytes)
    local = threading.local()

    def store() -> LabelStore:
        # sqlite3 connections stay in the thread that opened them; FastAPI runs sync
        # endpoints on a thread pool, so each worker thread keeps its own
        if getattr(local, "store", None) is None:
            local.store = LabelStore(db)
        return local.store

    pages = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    app = FastAPI(title="tunelab labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(pages.get_template(name).render(**context), status_code=status)

    def current_user(request: Request) -> User:
        user = store().user_for_token(token_of(request.headers.get("authorization", ""), request.cookies.get(cookie)))
        if user is None:
            raise _Unauthorized()
        return user

    def authorize(scope: dict) -> Refusal | None:
        """Run by the guard before it reads a body: only a signed-in user (or the sign-in
        form) gets one read, so an anonymous client cannot make the server buffer bodies."""
        headers = dict(scope["headers"])
        if scope["path"] == "/login" or (headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers):
            return None
        given = token_of(headers.get(b"authorization", b"").decode("latin-1"),
                         cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(cookie))
        return None if store().user_for_token(given) else (401, {"error": SIGN_IN})

    def admin_user(user: User = Depends(current_user)) -> User:
        if not user.is_admin:
            raise LabelError("this needs an admin token", 403)
        return user

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        if request.method in UNSAFE_METHODS and cross_site(request):
            response: Response = JSONResponse({"error": "refused: a cross-site request (Origin / Sec-Fetch-Site)"}, 403)
        elif request.method in UNSAFE_METHODS and request.url.path.startswith("/api/") and \
                request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            response = JSONResponse({"error": "send JSON (Content-Type: application/json)"}, 415)
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if secure_cookie:
            response.headers["Strict-Transport-Security"] = HSTS
        return response

    @app.exception_handler(_Unauthorized)
    async def unauthorized(request: Request, exc: _Unauthorized) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": SIGN_IN}, 401)
        return RedirectResponse("/login", 303)

    @app.exception_handler(LabelError)
    async def label_error(request: Request, exc: LabelError) -> Response:
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:  # a bug: the detail stays in the log
        return JSONResponse({"error": internal_error_message(log_internal_error(exc, request.scope))}, 500)

    # -- pages ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def home(user: User = Depends(current_user)) -> Response:
        return RedirectResponse("/label", 303)

    @app.get("/login", response_class=HTMLResponse)
    def login_page() -> HTMLResponse:
        return render("login.html", error=None)

    @app.post("/login")
    def login(token: str = Form(max_length=200)) -> Response:
        user = store().user_for_token(token.strip())
        if user is None:
            return render("login.html", 401, error="That token is not valid.")
        response = RedirectResponse("/admin" if user.is_admin else "/label", 303)
        response.set_cookie(cookie, token.strip(), httponly=True, samesite="strict", secure=secure_cookie, path="/")
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(cookie, path="/", secure=secure_cookie, httponly=True, samesite="strict")
        return response

    @app.get("/label", response_class=HTMLResponse)
    def label_page(user: User = Depends(current_user)) -> HTMLResponse:
        labels = store()
        prompt = labels.next_prompt(user)
        context = {"user": user, "criterion": labels.settings()["criterion"], "progress": labels.progress(user)}
        if prompt is None:
            return render("done.html", **context)
        return render("label.html", prompt=prompt, completions=_shuffled(prompt, user), submission_id=uuid.uuid4().hex, **context)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(user: User = Depends(admin_user)) -> HTMLResponse:
        return render("admin.html", user=user, **labeling_report(store()))

    # -- API --------------------------------------------------------------------------------
    @app.get("/api/next")
    def next_prompt(user: User = Depends(current_user)) -> dict[str, Any]:
        labels = store()
        prompt = labels.next_prompt(user)
        return {"criterion": labels.settings()["criterion"], "progress": labels.progress(user),
                "prompt": None if prompt is None else {**prompt, "completions": _shuffled(prompt, user)}}

    @app.post("/api/judgements")
    def submit(body: Submission, user: User = Depends(current_user)) -> JSONResponse:
        stored = store().submit(user, body.prompt_id, body.ranks, body.submission_id)
        return JSONResponse(stored, 200 if stored["duplicate"] else 201)

    @app.get("/api/judgements")
    def my_judgements(user: User = Depends(current_user)) -> list[dict[str, Any]]:
        return store().judgements(user=user)

    @app.put("/api/judgements/{prompt_id}")
    def revise(body: Revision, prompt_id: int = PathParam(ge=1, le=MAX_ID), user: User = Depends(current_user)) -> dict[str, Any]:
        return store().update(user, prompt_id, body.ranks)

    @app.get("/api/progress")
    def progress(user: User = Depends(current_user)) -> dict[str, int]:
        return store().progress(user)

    @app.get("/api/admin/stats")
    def stats(user: User = Depends(admin_user)) -> dict[str, Any]:
        return labeling_report(store())

    headers = {**SECURITY_HEADERS, **({"Strict-Transport-Security": HSTS} if secure_cookie else {})}
    return RequestGuard(app, limits, authorize=authorize, headers=headers)


def token_of(authorization: str, cookie: str | None) -> str | None:
    """The labeler's token: a Bearer header (scripts), else the sign-in cookie (browsers)."""
    return authorization[7:].strip() if authorization.lower().startswith("bearer ") else cookie


def _shuffled(prompt: dict[str, Any], user: User) -> list[dict[str, Any]]:
    """The completions in an order of their own for each labeler (so position is no cue
    and labelers' position biases don't line up); stable across reloads."""
    completions = list(prompt["completions"])
    random.Random(f"{user.id}:{prompt['id']}").shuffle(completions)
    return completions


def serve(db: str | Path, host: str = "127.0.0.1", port: int = 8000, *, secure_cookie: bool = False,
          http: HttpLimits | None = None) -> None:
    from tunelab.web import is_loopback, run

    if not is_loopback(host):
        print(f"tunelab label serve: listening on {host}, beyond this machine; tokens travel in clear text "
              "unless a TLS proxy fronts the app (then pass --secure-cookie)")
    run(create_app(db, secure_cookie=secure_cookie, http=http), host, port)
