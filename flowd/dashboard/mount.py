"""Mount the dashboard in a Django or Flask app, under a path prefix.

Django, behind the admin's staff login (``urls.py``)::

    from django.urls import include, path
    from flowd.contrib.django import get_client
    from flowd.dashboard import Dashboard
    from flowd.dashboard.mount import django_urls

    urlpatterns = [path("flowd/", include(django_urls(Dashboard(get_client()))))]

Flask, registered under a prefix::

    from flowd.dashboard.mount import mount_flask

    mount_flask(app, Dashboard(client), "/flowd")

The dashboard keeps its own protection of actions (a SameSite cookie, a
form token and an Origin check), so it needs neither framework's CSRF
middleware: the Django view is exempt from it.

Hosts: under Django, ``Dashboard(allowed_hosts=None)`` (the default) leaves
the ``Host`` check to Django's ``ALLOWED_HOSTS``, which the view applies
before the dashboard sees the request. Flask checks no host by default, and
requests under the prefix never reach Flask anyway: give the Dashboard
``allowed_hosts=[...]`` there.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from .app import Dashboard


def _check(dashboard: object) -> Dashboard:
    if not isinstance(dashboard, Dashboard):
        raise ConfigurationError(
            f"expected a flowd.dashboard.Dashboard, not {type(dashboard).__name__}"
        )
    return dashboard


def django_view(dashboard: Dashboard) -> Callable[..., Any]:
    """A Django view serving ``dashboard``; its URL pattern must capture ``subpath``."""
    from django.http import HttpResponse

    def view(request: Any, subpath: str = "") -> Any:
        # Django checks ALLOWED_HOSTS only when something asks for the host; ask, so a
        # Host it does not allow gets its 400 (DisallowedHost) even with no middleware.
        request.get_host()
        environ = dict(request.META)
        # The prefix is what the URL had before the dashboard's own path.
        full = request.path
        environ["SCRIPT_NAME"] = full[: len(full) - len(subpath)].rstrip("/")
        environ["PATH_INFO"] = "/" + subpath
        body = request.body if request.method == "POST" else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.setdefault("wsgi.url_scheme", request.scheme)
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            started["status"], started["headers"] = status, headers

        content = b"".join(dashboard(environ, start_response))
        response = HttpResponse(content, status=int(started["status"].split()[0]))
        for name, value in started["headers"]:
            response[name] = value
        return response

    return view


def django_urls(
    dashboard: Dashboard, *, staff_only: bool = True, login_url: str | None = None
) -> list[Any]:
    """URL patterns for ``include()``; staff members only unless ``staff_only=False``.

    Anonymous and non-staff users are redirected to ``login_url`` (default:
    the admin's login page) by Django's ``staff_member_required``, which
    needs ``django.contrib.auth`` and its middleware.
    """
    from django.urls import re_path
    from django.views.decorators.csrf import csrf_exempt

    view: Any = csrf_exempt(django_view(_check(dashboard)))
    if staff_only:
        from django.contrib.admin.views.decorators import staff_member_required

        view = staff_member_required(view, login_url=login_url or "admin:login")
    return [re_path(r"^(?P<subpath>.*)$", view, name="flowd-dashboard")]


def mount_flask(app: Any, dashboard: Dashboard, prefix: str = "/flowd") -> None:
    """Serve ``dashboard`` under ``prefix`` in a Flask app (werkzeug's DispatcherMiddleware).

    Requests under the prefix go to the dashboard before Flask sees them,
    so put your own guard in front (a reverse proxy, or ``auth=``) if the
    app is reachable by people who should not act on queues, and give the
    Dashboard ``allowed_hosts=`` (Flask's ``TRUSTED_HOSTS`` does not apply).
    """
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix == "/":
        raise ConfigurationError(f"prefix must be a path such as '/flowd', not {prefix!r}")
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {prefix.rstrip("/"): _check(dashboard)})
