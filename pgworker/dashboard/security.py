"""The dashboard's guards: the bind rule, the Host allow-list, the password, CSRF checks."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable

from flask import Flask, Response, abort, request, session

from ..errors import ConfigurationError

#: Addresses that only this machine can reach: the dashboard binds to one by default.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: The client addresses of this machine's own connections.
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
#: Host header names always accepted (with any port).
DEFAULT_ALLOWED_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: The environment variable holding the dashboard's password (HTTP basic auth).
PASSWORD_VARIABLE = "PGWORKER_DASHBOARD_PASSWORD"
#: The header htmx sends the CSRF token in (forms also carry it as ``csrf_token``).
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def check_bind(host: str, password: str | None) -> None:
    """Refuse to listen on an address other machines can reach without a password."""
    if host not in LOOPBACK_HOSTS and not password:
        raise ConfigurationError(
            f"the dashboard would be reachable from other machines at {host} "
            f"without a password: set {PASSWORD_VARIABLE}, or bind 127.0.0.1"
        )


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port, lowercased (``[::1]`` keeps its
    brackets)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_host_names(bind_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The Host names the dashboard answers: loopback ones, the address it binds (unless
    a wildcard) and ``extra`` (a proxy's public name, say)."""
    names = set(DEFAULT_ALLOWED_HOSTS)
    if bind_host not in {"0.0.0.0", "::", ""}:
        names.add(f"[{bind_host}]" if ":" in bind_host else bind_host)
    names.update(host_name(name) for name in extra)
    return frozenset(names)


def csrf_token() -> str:
    """This session's CSRF token, made on first use."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def install_guards(
    flask_app: Flask, *, allowed_hosts: frozenset[str], password: str | None
) -> None:
    """Check every request: its Host, then the password (without one, that the client
    is on this machine), then, for anything but
    GET/HEAD/OPTIONS, that it comes from the dashboard's own pages (Origin and
    Sec-Fetch-Site, when the browser sends them) and carries the session's CSRF token."""
    flask_app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="pgworker_dashboard",
    )

    @flask_app.before_request
    def guard() -> Response | None:
        if host_name(request.host) not in allowed_hosts:
            abort(400, description="this Host is not one the dashboard answers to")
        if not password and request.remote_addr not in LOOPBACK_ADDRESSES:
            # The Host header is the client's to choose: without a password, the address
            # the request came from is what keeps the dashboard to this machine, however
            # it is served (the CLI, or create_dashboard() in another WSGI server).
            abort(403, description=f"without {PASSWORD_VARIABLE}, only this machine may connect")
        if password and not _password_ok(password):
            return Response(
                "the dashboard needs its password",
                401,
                {"WWW-Authenticate": 'Basic realm="pgworker dashboard", charset="UTF-8"'},
            )
        if request.method not in _SAFE_METHODS:
            refusal = cross_site_refusal()
            if refusal:
                abort(403, description=refusal)
        return None

    @flask_app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response


def _password_ok(password: str) -> bool:
    auth = request.authorization
    given = auth.password if auth is not None and auth.type == "basic" else None
    return given is not None and hmac.compare_digest(given.encode(), password.encode())


def cross_site_refusal() -> str | None:
    """Why the current unsafe request must be refused, or None when it is the
    dashboard's own: same origin (when the browser says) and the session's token."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site != "same-origin":
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"cross-site request refused (Origin: {origin})"
    expected = session.get(CSRF_FIELD)
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not given:
        return "missing CSRF token: reload the dashboard and try again"
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "wrong CSRF token: reload the dashboard and try again"
    return None
