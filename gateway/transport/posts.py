"""POST endpoints straight to their function, without Starlette's middleware stack, FastAPI's
router and its request handling (the route search, the dependency and body machinery, the
response checks): what the publish endpoints cost per request beyond their own work. The
endpoint is the route's own function, handed a ``Request``; what it raises is answered by the
app's exception handlers, so the statuses and JSON bodies are those of the FastAPI path."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PostEndpoint = Callable[[Request], Awaitable[Response]]
Posts = dict[str, PostEndpoint]  # path -> the endpoint


def direct_posts(*routers: APIRouter) -> Posts:
    """The routers' POST routes whose function takes the request and nothing else (it reads
    its body itself) and returns a ``Response``. The routers must be included in the app as
    they are (no prefix, no dependencies)."""
    found: Posts = {}
    for route in (route for router in routers for route in router.routes):
        if not isinstance(route, APIRoute) or route.methods != {"POST"} or route.param_convertors:
            continue
        dependant = route.dependant
        if dependant.request_param_name is None or any((
            dependant.path_params, dependant.query_params, dependant.header_params,
            dependant.cookie_params, dependant.body_params, dependant.dependencies,
        )):
            continue
        found.setdefault(route.path, route.endpoint)
    return found


async def serve_post(
    app: FastAPI, endpoint: PostEndpoint, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run ``endpoint`` for one request, its errors through the app's exception handlers."""
    scope["app"] = app  # what Starlette sets, and ``parts_of`` reads
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception as exc:
        handler = next((app.exception_handlers[kind] for kind in type(exc).__mro__
                        if kind in app.exception_handlers), None)
        if handler is None:
            raise
        answer = handler(request, exc)
        response = await answer if inspect.isawaitable(answer) else answer
    await response(scope, receive, send)
