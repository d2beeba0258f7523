"""HTTP endpoints for operators: /metrics (Prometheus), /healthz (alive), /readyz (doing work)."""
from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

HealthCheck = Callable[[], tuple[bool, dict]]


class HttpServer:
    """Serves metrics and health on one host:port."""

    def __init__(self, host: str, port: int, render_metrics: Callable[[], bytes],
                 healthz: HealthCheck, readyz: HealthCheck) -> None:
        self._host, self._port = host, port
        self._render = render_metrics
        self._checks = {"/healthz": healthz, "/readyz": readyz}
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raises OSError if the address is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        self.bound_port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener and open connections."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = self._render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        ok, detail = self._checks[request.path]()
        body = json.dumps({"status": "ok" if ok else "fail", **detail}, default=str)
        return web.Response(text=body, status=200 if ok else 503, content_type="application/json")
