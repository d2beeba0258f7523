"""HTTP endpoints for operators: /metrics (Prometheus), /healthz (alive), /readyz (doing work) and
the live /preview page (pictures with detections; see pipeline.preview)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.preview import PreviewHub

HealthCheck = Callable[[], tuple[bool, dict]]


class HttpServer:
    """Serves metrics and health on one host:port."""

    def __init__(self, host: str, port: int, render_metrics: Callable[[], bytes],
                 healthz: HealthCheck, readyz: HealthCheck, preview: PreviewHub | None = None,
                 camera_states: Callable[[], dict[str, str]] | None = None) -> None:
        self._host, self._port = host, port
        self._render = render_metrics
        self._checks = {"/healthz": healthz, "/readyz": readyz}
        self._preview = preview
        self._camera_states = camera_states or dict
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raises OSError if the address is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._health)
        if self._preview is not None:
            app.router.add_get("/preview", self._preview_page)
            app.router.add_get("/preview/state.json", self._preview_state)
            app.router.add_get("/preview/{camera}.jpg", self._preview_jpeg)
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

    async def _preview_page(self, _request: web.Request) -> web.Response:
        page = resources.files("pipeline").joinpath("static/preview.html").read_text()
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _preview_state(self, _request: web.Request) -> web.Response:
        latest = self._preview.summary()
        cameras = {cam: {"state": state, "latest": latest.get(cam)} for cam, state in self._camera_states().items()}
        return web.json_response({"cameras": cameras}, headers={"Cache-Control": "no-store"})

    async def _preview_jpeg(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        body = await asyncio.to_thread(self._preview.jpeg, camera)  # scaling and JPEG off the loop
        if body is None:
            return web.Response(status=404, text=f"no picture of camera {camera!r} yet")
        return web.Response(body=body, content_type="image/jpeg", headers={"Cache-Control": "no-store"})
