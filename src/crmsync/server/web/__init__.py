"""The server's web app (FastAPI): the JSON API under ``/api`` and the HTML pages.

Both are thin over :mod:`crmsync.server.service`, which checks who may do what. This
module adds what belongs to the web: who is signed in (a session cookie), CSRF (every
unsafe request echoes the session's token: header ``X-CSRF-Token`` for the API, form
field ``csrf_token`` for pages), and the mapping of the service's errors to HTTP.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import APIKeyCookie, APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmsync.errors import ConfigError, ConnectionFailed
from crmsync.server import accounts
from crmsync.server.accounts import RateLimited, Session
from crmsync.server.queue import JobQueue
from crmsync.server.service import Forbidden, NotFound, SalesforceApp, Server
from crmsync.server.settings import LockedSetting
from crmsync.server.vault import Vault
from crmsync.store import Store

log = logging.getLogger(__name__)

COOKIE = "crmsync_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")


def create_app(store: Store, queue: JobQueue | None, *, vault: Vault,
               salesforce: SalesforceApp | None = None, secure_cookies: bool = True,
               public_url: str | None = None, pages: bool = True) -> FastAPI:
    """The app. ``secure_cookies=False`` only for plain-http development and tests;
    ``public_url``: the server's address as browsers see it (behind a proxy), for the
    OAuth redirect."""
    from crmsync.server.web import api

    app = FastAPI(title="crmsync server", version="1",
                  description="Sync jobs, settings, connections, reviews and run history "
                  "of the signed-in user, and the admin's defaults. Sign in with POST "
                  "/api/session; send the session's csrf_token in the X-CSRF-Token header "
                  "of every POST, PUT, PATCH and DELETE.")
    app.state.srv = Server(store, vault, queue, salesforce)
    app.state.secure_cookies = secure_cookies
    app.state.public_url = public_url.rstrip("/") if public_url else None
    app.state.pages = pages
    _errors(app)
    _headers(app)
    app.include_router(api.router)
    if pages:
        from crmsync.server.web import pages as pages_module

        app.include_router(pages_module.router)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def server(request: Request) -> Server:
    return request.app.state.srv


def current_session(request: Request) -> Session | None:
    return accounts.session_of(server(request).store, request.cookies.get(COOKIE))


# Declared for the OpenAPI schema: the session cookie, and the CSRF header that unsafe
# methods need. The checks themselves are signed_in's.
_cookie = APIKeyCookie(name=COOKIE, auto_error=False, description="The session, set by "
                       "POST /api/session.")
_csrf = APIKeyHeader(name=CSRF_HEADER, auto_error=False, description="The session's "
                     "csrf_token; required on POST, PUT, PATCH and DELETE.")


def signed_in(request: Request, _token: Annotated[str | None, Depends(_cookie)] = None,
              _sent: Annotated[str | None, Depends(_csrf)] = None) -> Session:
    """The API's guard: a session (401 otherwise) and, for unsafe methods, its CSRF token
    in the header (403 otherwise)."""
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "sign in first")
    if request.method not in SAFE_METHODS and not accounts.csrf_ok(
            session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, f"the {CSRF_HEADER} header is missing or wrong")
    return session


def set_session_cookie(request: Request, response, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=accounts.SESSION_DAYS * 86400, path="/",
                        httponly=True, samesite="lax",
                        secure=request.app.state.secure_cookies)


def _headers(app: FastAPI) -> None:
    """Headers every answer carries: no framing by other sites (clickjacking), no content
    sniffing, no address leaking in Referer, and nothing personal kept in caches."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(("/docs", "/redoc", "/openapi.json")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and request.app.state.pages


def _errors(app: FastAPI) -> None:
    """The service's errors as HTTP: JSON for the API, a page for the pages (a page that
    is not signed in goes to the sign-in page)."""

    def answer(request: Request, status: int, exc: Exception, **extra: object) -> Response:
        if _is_page(request):
            from crmsync.server.web.pages.common import render

            return render(request, "error.html", status, status_code=status,
                          message=str(exc))
        return JSONResponse({"detail": str(exc), **extra}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not _is_page(request):
            return await http_exception_handler(request, exc)
        if exc.status_code == 401:
            return RedirectResponse("/signin", status_code=303)
        return answer(request, exc.status_code, Exception(exc.detail))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return answer(request, 404, exc)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return answer(request, 403, exc)

    @app.exception_handler(LockedSetting)
    async def locked(request: Request, exc: LockedSetting) -> Response:
        return answer(request, 403, exc, setting=exc.name)

    @app.exception_handler(ConfigError)
    async def config(request: Request, exc: ConfigError) -> Response:
        return answer(request, 400, exc)

    @app.exception_handler(ConnectionFailed)
    async def connection(request: Request, exc: ConnectionFailed) -> Response:
        # The connection test of a new account, or Salesforce refusing the code.
        return answer(request, 400, ConnectionFailed(f"the connection failed: {exc}"))

    @app.exception_handler(RateLimited)
    async def limited(request: Request, exc: RateLimited) -> Response:
        response = answer(request, 429, exc)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
