"""Authorizing crmsync at a Salesforce org: ``crmsync login NAME --side crm``.

Two OAuth 2.0 flows, each ending in the :class:`Credentials` that crmsync.secrets stores:

* web server flow, for people: the browser goes to Salesforce's authorize page, which
  sends it back to a one-shot :class:`Listener` on 127.0.0.1 with a code (or the user
  pastes the code, :func:`pasted_code`); :func:`finish_web_login` trades the code for a
  refresh token.
* JWT bearer flow, for servers (a connected app with a certificate): :func:`jwt_login`
  asks for a token once, to prove the setup works before anything is saved.

Nothing here prints or logs a secret: the listener's page and log never show the code.
"""

from __future__ import annotations

import hmac
import html
import os
import secrets
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from crmsync.connectors.base import Credentials
from crmsync.connectors.sfapi import Token, authorize_url, exchange_code, jwt_token
from crmsync.errors import ConfigError, ConnectionFailed

CALLBACK_PATH = "/callback"


def new_state() -> str:
    """The ``state`` that ties the redirect to the login that asked for it."""
    return secrets.token_urlsafe(24)


# --- the listener ------------------------------------------------------------------------


class _Server(HTTPServer):
    path: str
    state: str
    # ("code", code) or ("error", message), once the redirect came.
    result: tuple[str, str] | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that connects and says nothing does not hold the wait up

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != self.server.path:
            return self._page(404, "Not found.")
        state = query.get("state", "")
        if not hmac.compare_digest(state.encode(), self.server.state.encode()):
            return self._page(400, "This answer does not belong to the login crmsync "
                              "started (state mismatch); it was ignored.")
        if "error" in query:
            message = query["error"] + (f": {query['error_description']}"
                                        if query.get("error_description") else "")
            self.server.result = ("error", message)
            return self._page(400, f"crmsync was not authorized: {message}")
        if not query.get("code"):
            return self._page(400, "The answer carries no authorization code.")
        self.server.result = ("code", query["code"])
        self._page(200, "crmsync is authorized. You can close this window and go back to "
                        "the terminal.")

    def _page(self, status: int, text: str) -> None:
        body = (f"<!doctype html><meta charset=utf-8><title>crmsync login</title>"
                f"<p>{html.escape(text)}</p>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request line carries the code: never logged


class Listener:
    """A one-shot HTTP server on 127.0.0.1 waiting for the authorize page's redirect.

    ``redirect_uri`` is ``http://localhost:PORT/callback`` unless one is given (it must
    then be http on localhost or 127.0.0.1 with a port: its port and path are used).
    """

    def __init__(self, port: int = 0, redirect_uri: str | None = None) -> None:
        host, path = "localhost", CALLBACK_PATH
        if redirect_uri:
            parts = urlsplit(redirect_uri)
            if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1") \
                    or not parts.port:
                raise ConfigError("--redirect-uri must be http://localhost:PORT/PATH (or "
                                  "127.0.0.1) to be received here; give --code-stdin to "
                                  "paste the code from any other redirect")
            host, port, path = parts.hostname, parts.port, parts.path or "/"
        try:
            self.server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose "
                              "another --redirect-port") from None
        self.server.path = path
        self.redirect_uri = f"http://{host}:{self.server.server_port}{path}"

    def wait(self, state: str, timeout: float) -> str:
        """The authorization code, once a redirect with the right ``state`` came."""
        self.server.state = state
        deadline = time.monotonic() + timeout
        while self.server.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionFailed(f"no authorization came back within {timeout:g} s; "
                                       "run login again (or raise --timeout)")
            self.server.timeout = left
            self.server.handle_request()
        kind, value = self.server.result
        if kind == "error":
            raise ConnectionFailed(f"Salesforce did not authorize crmsync: {value}")
        return value

    def close(self) -> None:
        self.server.server_close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_browser(url: str) -> None:
    """Try the desktop's browser; never a text browser that would take the terminal."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return
    import webbrowser

    try:
        webbrowser.open(url)
    except webbrowser.Error:
        pass


# --- the flows ---------------------------------------------------------------------------


def browser_login(listener: Listener, *, client_id: str, login_url: str, timeout: float,
                  show: Callable[[str], None], browser: bool) -> str:
    """Send the user to the authorize page and wait for the code (web server flow)."""
    state = new_state()
    url = authorize_url(client_id, listener.redirect_uri, login_url=login_url, state=state)
    show(url)
    if browser:
        open_browser(url)
    return listener.wait(state, timeout)


def pasted_login(*, client_id: str, redirect_uri: str, login_url: str,
                 show: Callable[[str], None], read: Callable[[], str]) -> str:
    """Show the authorize page's address, then read the code the user pastes."""
    state = new_state()
    show(authorize_url(client_id, redirect_uri, login_url=login_url, state=state))
    return pasted_code(read(), state)


def pasted_code(text: str, state: str | None = None) -> str:
    """The code from what the user pasted: the code itself or the whole redirect address."""
    text = text.strip()
    if "://" in text or text.startswith("?"):
        query = {k: v[0] for k, v in parse_qs(urlsplit(text).query).items()}
        if "error" in query:
            raise ConnectionFailed(f"Salesforce did not authorize crmsync: {query['error']}"
                                   + (f": {query['error_description']}"
                                      if query.get("error_description") else ""))
        if state is not None and query.get("state", state) != state:
            raise ConfigError("the pasted address belongs to another login (state "
                              "mismatch); open the address printed above")
        text = query.get("code", "")
    elif "%" in text:
        text = unquote(text)  # copied from an address bar: still URL-encoded
    if not text:
        raise ConfigError("no authorization code was given")
    return text


def finish_web_login(code: str, *, client_id: str, client_secret: str, redirect_uri: str,
                     login_url: str, tls: Credentials) -> tuple[Credentials, Token]:
    """Trade the code for a refresh token; the credentials to save, and the token."""
    token = exchange_code(code, client_id=client_id, client_secret=client_secret,
                          redirect_uri=redirect_uri, login_url=login_url, credentials=tls)
    if not token.refresh_token:
        raise ConnectionFailed("Salesforce gave no refresh token: add the scope 'Perform "
                               "requests at any time (refresh_token, offline_access)' to "
                               "the connected app, then log in again")
    return Credentials(verify=tls.verify, ca_bundle=tls.ca_bundle, client_id=client_id,
                       client_secret=client_secret, refresh_token=token.refresh_token,
                       login_url=login_url), token


def read_private_key(path: str) -> str:
    """The PEM text of a private key file (checked to be one)."""
    file = os.path.expanduser(path)
    try:
        with open(file, encoding="ascii") as fh:
            pem = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the private key file {file} cannot be read: {exc}") from None
    if "PRIVATE KEY-----" not in pem:
        raise ConfigError(f"{file} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    return pem


def jwt_login(*, client_id: str, username: str, private_key: str, login_url: str,
              tls: Credentials) -> tuple[Credentials, Token]:
    """Prove the JWT bearer setup with one token request; the credentials to save."""
    import jwt

    try:
        token = jwt_token(client_id=client_id, username=username, private_key=private_key,
                          login_url=login_url, credentials=tls)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise ConfigError(f"the private key cannot sign a JWT (RS256 needs an RSA key): "
                          f"{type(exc).__name__}") from None
    except ConnectionFailed as exc:
        if "refused the login" not in str(exc):
            raise
        raise ConnectionFailed(f"{exc}. Check the consumer key (--client-id), the user name, "
                               "that the user is pre-authorized for the connected app, that "
                               "its certificate matches --jwt-key and the login URL") from None
    return Credentials(username=username, verify=tls.verify, ca_bundle=tls.ca_bundle,
                       client_id=client_id, private_key=private_key,
                       login_url=login_url), token
