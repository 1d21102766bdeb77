"""WebSocket upgrades straight to their endpoint: an ASGI app in front of FastAPI that hands an
upgrade of a fixed path (``/v1/ws``, ``/realtime/v1/websocket``, …) to the route's endpoint
itself, without Starlette's middleware stack and router. For a connection that is five
middlewares, an exit stack, the route search and the dependency resolution, about a sixth of
the server's CPU per connection set up (bench.connect). The publish POSTs take the same way
(transport/posts.py). Everything else, and any route with parameters or dependencies, goes
through FastAPI as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import APIWebSocketRoute
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from gateway.transport.posts import Posts, serve_post

Endpoint = Callable[..., Awaitable[None]]


Endpoints = dict[str, tuple[str, Endpoint]]  # path -> (the socket's parameter name, endpoint)


def direct_endpoints(*routers: APIRouter) -> Endpoints:
    """The routers' WebSocket routes that take nothing but the socket. The routers must be
    included in the app as they are (no prefix, no dependencies), and before any route that
    could shadow their paths."""
    found: Endpoints = {}
    for route in (route for router in routers for route in router.routes):
        if not isinstance(route, APIWebSocketRoute) or route.param_convertors:
            continue
        dependant = route.dependant
        name = dependant.websocket_param_name
        if name is None or any((dependant.path_params, dependant.query_params,
                                dependant.header_params, dependant.cookie_params,
                                dependant.body_params, dependant.dependencies)):
            continue
        found.setdefault(route.path, (name, route.endpoint))
    return found


class DirectUpgrades:
    """``app`` with the WebSocket routes of ``app.state.upgrades`` (``direct_endpoints``)
    served without the middleware stack (see the module), and so are the POST routes of
    ``app.state.posts`` when it is set (``transport/posts.py``)."""

    __slots__ = ("app", "_endpoints", "_posts")

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._endpoints: Endpoints = app.state.upgrades
        self._posts: Posts = getattr(app.state, "posts", {})

    @property
    def state(self) -> State:
        """The app's state, where a server's config holds this in its place."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not scope.get("root_path"):
            found = self._endpoints.get(scope["path"])
            if found is not None:
                name, endpoint = found
                scope["app"] = self.app  # what Starlette sets, and ``parts_of`` reads
                await endpoint(**{name: WebSocket(scope, receive, send)})
                return
        elif scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            post = self._posts.get(scope["path"])
            if post is not None:
                await serve_post(self.app, post, scope, receive, send)
                return
        await self.app(scope, receive, send)
