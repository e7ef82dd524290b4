"""The HTTP face: routes derived from the op table, OpenAPI, health checks, /metrics.

``HttpFront`` (front.py) runs uvicorn inside the broker's own task group; ``build_app``
(app.py) is the Starlette application; ``ROUTES`` (routes.py) maps each op to its route.
"""

from durable_tq.servers.http.front import HttpFront

__all__ = ["HttpFront"]
