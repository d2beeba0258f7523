"""The daemon's HTTP endpoint (`metrics.listen`): one route table says what each route does and
whether it needs a token; one middleware checks tokens and turns every error into one JSON
shape; the OpenAPI document (/v1/openapi.json) is built from the same table.

Tokens (`api.tokens_env`, `api.tokens_file`) are compared in constant time and never logged,
exported or echoed. A browser sends one as the password of HTTP Basic authentication (any user
name): the 401 answer asks for it, so /preview opens with the browser's own login prompt. With
no token configured the protected routes are open on a loopback address and switched off on any
other, which the log says once and /readyz says always.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from pipeline.api.detect import classes_pattern
from pipeline.api.errors import ApiError
from pipeline.api.images import read_image
from pipeline.config import ApiConfig, ConfigError
from pipeline.logs import log_event

log = logging.getLogger(__name__)
MIN_TOKEN_LENGTH = 16
HealthCheck = Callable[[], tuple[bool, dict]]


@dataclass(frozen=True)
class Route:
    """One endpoint: what it answers, and whether it needs a token."""

    method: str
    path: str
    handler: str  # the HttpServer method that answers it
    protected: bool
    summary: str
    responses: dict[int, str]  # status -> schema name (SCHEMAS) or a media type
    body: bool = False  # takes an image (POST /v1/detect)
    json_body: str | None = None  # takes a JSON object of this schema (SCHEMAS)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/metrics", "_metrics", False, "Prometheus metrics", {200: "text/plain"}),
    Route("GET", "/healthz", "_health", False, "Alive: the inference threads run and make progress",
          {200: "Health", 503: "Health"}),
    Route("GET", "/readyz", "_health", False, "Ready: model loaded, Kafka connected, cameras streaming; "
          "status degraded (still 200) while the spool's disk refuses writes; also says whether the protected "
          "endpoints are on", {200: "Health", 503: "Health"}),
    Route("GET", "/v1/openapi.json", "_openapi", False, "The OpenAPI document of this API", {200: "application/json"}),
    Route("GET", "/preview", "_preview_page", True, "Live page of the cameras' pictures with detections",
          {200: "text/html", 404: "Error"}),
    Route("GET", "/preview/state.json", "_preview_state", True, "Each camera's state and latest frame",
          {200: "PreviewState", 404: "Error"}),
    Route("GET", "/preview/{camera}.jpg", "_preview_jpeg", True, "A camera's latest picture, annotated",
          {200: "image/jpeg", 404: "Error"}),
    Route("POST", "/v1/detect", "_detect", True, "Detect objects in a JPEG or PNG image with the cameras' model",
          {200: "DetectResult", 400: "Error", 404: "Error", 413: "Error", 415: "Error", 500: "Error",
           503: "Error", 504: "Error"}, body=True),
    Route("GET", "/v1/cameras", "_cameras", True, "The cameras: state, reason, sampling, last frame",
          {200: "Cameras"}),
    Route("POST", "/v1/cameras/{camera}/clips", "_clip_request", True, "Record an evidence clip of a camera: "
          "from the keyframe at or before pre_s seconds ago to post_s seconds from now (clips.enabled)",
          {202: "ClipStarted", 400: "Error", 404: "Error", 409: "Error"}, json_body="ClipRequest"),
    Route("GET", "/v1/clips/{clip}", "_clip_file", True, "A clip's MP4, once written (its clips/v1 message says so)",
          {200: "video/mp4", 404: "Error"}),
    Route("GET", "/v1/snapshots/{snapshot}", "_snapshot_file", True, "An alerted track's best picture as a JPEG, once "
          "written (its snapshots/v1 message says so)", {200: "image/jpeg", 404: "Error"}),
    Route("GET", "/v1/snapshots/{snapshot}/boxed", "_snapshot_boxed", True, "The same picture with the track's box "
          "and label drawn", {200: "image/jpeg", 404: "Error"}),
)

_DETECTION = {"type": "object", "required": ["class_id", "label", "confidence", "bbox"], "properties": {
    "class_id": {"type": "integer", "minimum": 0}, "label": {"type": "string"},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0},
             "description": "x1, y1, x2, y2 in the image's pixels"}}}
SCHEMAS: dict[str, dict] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message"], "properties": {
            "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "degraded", "fail"]}}},
    "PreviewState": {"type": "object", "required": ["cameras"], "properties": {"cameras": {"type": "object"}}},
    "Detection": _DETECTION,
    "DetectResult": {"type": "object", "required": ["image", "detections", "model", "confidence", "seconds"],
                     "properties": {
                         "image": {"type": "object", "required": ["width", "height"], "properties": {
                             "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1}}},
                         "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"}},
                         "model": {"type": "object", "required": ["name", "sha256", "backend"], "properties": {
                             "name": {"type": "string"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                             "backend": {"type": "string"}}},
                         "confidence": {"type": "number"}, "seconds": {"type": "number", "minimum": 0}}},
    "ClipRequest": {"type": "object", "additionalProperties": False, "properties": {
        "pre_s": {"type": "number", "minimum": 0, "maximum": 120,
                  "description": "seconds before now (at most clips.pre_s; default clips.pre_s)"},
        "post_s": {"type": "number", "minimum": 0, "maximum": 120, "description": "default clips.post_s"}}},
    "ClipStarted": {"type": "object", "required": ["clip_id", "camera_id", "pre_s", "post_s", "url"], "properties": {
        "clip_id": {"type": "string"}, "camera_id": {"type": "string"}, "pre_s": {"type": "number"},
        "post_s": {"type": "number"}, "url": {"type": "string", "description": "GET it once its clips/v1 message came"}}},
    "Cameras": {"type": "object", "required": ["cameras"], "properties": {"cameras": {"type": "array", "items": {
        "type": "object", "required": ["id", "state", "reason", "fps", "last_frame_at"], "properties": {
            "id": {"type": "string"}, "state": {"type": "string"}, "reason": {"type": ["string", "null"]},
            "fps": {"type": ["number", "null"], "description": "configured sampling; null: every frame"},
            "last_frame_at": {"type": ["string", "null"], "format": "date-time"},
            "transport": {"enum": ["tcp", "udp", None], "description": "what the camera's RTP comes over "
                          "(the last connection's; null before the first)"},
            "node": {"type": ["string", "null"], "description": "placement on: the node that runs it (state "
                     "'elsewhere': another node; 'unplaced' with null: none has room)"}}}}}},
}


@dataclass
class Endpoints:
    """What the routes serve, handed in by the Runtime."""

    metrics: Callable[[], bytes]
    healthz: HealthCheck
    readyz: HealthCheck
    cameras: Callable[[], list[dict]]
    preview: Any = None  # pipeline.preview.PreviewHub, when metrics.preview is on
    camera_states: Callable[[], dict[str, str]] = dict
    detect: Any = None  # pipeline.api.detect.DetectService, when api.detect.enabled
    clips: Any = None  # pipeline.app.ClipService, when clips.enabled
    count: Callable[[str, int], None] = lambda endpoint, status: None  # requests, for the metrics


def load_tokens(api: ApiConfig, environ: dict[str, str] | None = None) -> list[str]:
    """The configured tokens; ConfigError when one is too short to be a secret."""
    env = os.environ if environ is None else environ
    tokens = []
    if api.tokens_env and env.get(api.tokens_env):
        tokens += [t.strip() for t in env[api.tokens_env].split(",") if t.strip()]
    if api.tokens_file is not None:
        try:
            tokens += [line.strip() for line in Path(api.tokens_file).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise ConfigError([f"api.tokens_file: cannot read {api.tokens_file}: {exc.strerror}"]) from None
    short = [t for t in tokens if len(t) < MIN_TOKEN_LENGTH]
    if short:
        raise ConfigError([f"api tokens: {len(short)} shorter than {MIN_TOKEN_LENGTH} characters; use long random "
                           "ones (e.g. openssl rand -hex 32)"])
    return tokens


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpServer:
    """Serves ROUTES on one host:port."""

    def __init__(self, host: str, port: int, api: ApiConfig, tokens: list[str], endpoints: Endpoints) -> None:
        self._host, self._port = host, port
        self._api, self._ep = api, endpoints
        self._tokens = [t.encode() for t in tokens]
        self._locked = not tokens and not is_loopback(host)  # secure by default
        self._runner: web.AppRunner | None = None
        self._routes: dict[tuple[str, str], Route] = {}
        self.bound_port: int | None = None
        # images are decoded by two threads of low priority: the cameras' decoding goes first
        self._decoders = ThreadPoolExecutor(2, "detect-decode", initializer=_lower_priority)
        self._malformed = MalformedRequests(endpoints.count)

    @property
    def protection(self) -> str:
        """How the protected endpoints stand, for /readyz and the log."""
        if self._locked:
            return (f"off: listening on {self._host} without an API token; set {self._api.tokens_env} or "
                    "api.tokens_file to serve /preview and /v1")
        return f"token required ({len(self._tokens)} configured)" if self._tokens else "open: loopback, no token"

    def active_routes(self) -> list[Route]:
        """The routes this daemon serves (preview and detect only when on)."""
        off = {"/preview": self._ep.preview is None, "/v1/detect": self._ep.detect is None,
               "/v1/clips": self._ep.clips is None, "/v1/snapshots": self._ep.clips is None}

        def switched_off(route: Route) -> bool:
            return (any(route.path.startswith(prefix) and is_off for prefix, is_off in off.items())
                    or (route.path.endswith("/clips") and self._ep.clips is None))

        return [r for r in ROUTES if not switched_off(r)]

    async def start(self) -> None:
        """Bind and serve; raises OSError if the address is taken."""
        app = web.Application(middlewares=[self._middleware],
                              client_max_size=int(self._api.detect.max_body_mb * 1024 * 1024))
        for route in self.active_routes():
            resource = app.router.add_route(route.method, route.path, getattr(self, route.handler))
            self._routes[(route.method, resource.resource.canonical)] = route
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        logging.getLogger("aiohttp.server").addFilter(self._malformed)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl()).start()
        self.bound_port = self._runner.addresses[0][1]
        if self._locked:
            log_event(log, logging.WARNING, "pictures and inference are off over HTTP", why=self.protection)

    def _ssl(self) -> ssl.SSLContext | None:
        tls = self._api.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(tls.certfile), str(tls.keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"api.tls: cannot load {tls.certfile} / {tls.keyfile}: {exc}"]) from None
        return context

    async def stop(self) -> None:
        """Close the listener and open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
        logging.getLogger("aiohttp.server").removeFilter(self._malformed)
        self._decoders.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the middleware
    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        route = self._route_of(request)
        try:
            if route is not None and route.protected:
                self._authorize(request)
            response = await handler(request)
        except ApiError as err:
            response = _error_response(err)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (body over client_max_size)
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
            message = (f"the body is over {self._api.detect.max_body_mb:g} MiB (api.detect.max_body_mb)"
                       if exc.status == 413 else exc.reason)
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # 405: RFC 9110 wants it
            response = _error_response(ApiError(exc.status, code, message, allow))
        self._ep.count(route.path if route is not None else "other", response.status)
        return response

    def _route_of(self, request: web.Request) -> Route | None:
        info = request.match_info
        if info.route is None or info.route.resource is None:
            return None
        return self._routes.get((request.method, info.route.resource.canonical))

    def _authorize(self, request: web.Request) -> None:
        if self._locked:
            raise ApiError(403, "api_off", f"pictures and inference are {self.protection}")
        if not self._tokens:
            return  # loopback without tokens: open
        offered = _offered_token(request.headers.get("Authorization", ""))
        # every token compared, in constant time, whatever matches
        matched = [hmac.compare_digest(offered, token) for token in self._tokens] if offered else []
        if not any(matched):
            raise ApiError(401, "unauthorized", "a valid API token is required: Authorization: Bearer <token> "
                           "(or HTTP Basic with the token as the password)",
                           {"WWW-Authenticate": 'Bearer realm="rtsp-pipeline", Basic realm="rtsp-pipeline"'})

    # ------------------------------------------------------------------ handlers
    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._ep.metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        ok, detail = (self._ep.healthz if request.path == "/healthz" else self._ep.readyz)()
        if request.path == "/readyz":
            detail = {**detail, "api": {"protected_endpoints": self.protection}}
        status = ("degraded" if detail.get("degraded") else "ok") if ok else "fail"
        return web.json_response({"status": status, **detail}, status=200 if ok else 503,
                                 dumps=lambda body: json.dumps(body, default=str))

    async def _openapi(self, _request: web.Request) -> web.Response:
        labels = self._ep.detect.labels() if self._ep.detect is not None else ()
        return web.json_response(openapi(self.active_routes(), labels))

    async def _preview_page(self, _request: web.Request) -> web.Response:
        page = resources.files("pipeline").joinpath("static/preview.html").read_text()
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _preview_state(self, _request: web.Request) -> web.Response:
        latest = self._ep.preview.summary()
        cameras = {cam: {"state": state, "latest": latest.get(cam)} for cam, state in self._ep.camera_states().items()}
        return web.json_response({"cameras": cameras}, headers={"Cache-Control": "no-store"})

    async def _preview_jpeg(self, request: web.Request) -> web.Response:
        camera = request.match_info["camera"]
        body = await asyncio.to_thread(self._ep.preview.jpeg, camera)  # scaling and JPEG off the loop
        if body is None:
            raise ApiError(404, "no_picture", f"no picture of camera {camera!r} yet")
        return web.Response(body=body, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _cameras(self, _request: web.Request) -> web.Response:
        return web.json_response({"cameras": self._ep.cameras()})

    async def _clip_request(self, request: web.Request) -> web.Response:
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "bad_json", "the body is not JSON: send {\"pre_s\": 10, \"post_s\": 10} or nothing") \
                    from None
        if not isinstance(body, dict) or set(body) - {"pre_s", "post_s"}:
            raise ApiError(400, "bad_request", "the body is a JSON object with pre_s and post_s (seconds) at most")
        for key in ("pre_s", "post_s"):
            value = body.get(key, 0)  # absent: the default; null is not a number
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 120:
                raise ApiError(400, "bad_request", f"{key}: give seconds from 0 to 120")
        started = self._ep.clips.request(request.match_info["camera"], body.get("pre_s"), body.get("post_s"))
        return web.json_response(started, status=202)

    async def _clip_file(self, request: web.Request) -> web.StreamResponse:
        path = self._ep.clips.path(request.match_info["clip"])
        if path is None:
            raise ApiError(404, "no_clip", f"no clip {request.match_info['clip']!r} (not written yet, failed, "
                           "or deleted by retention)")
        return web.FileResponse(path, headers={"Content-Type": "video/mp4", "Cache-Control": "no-store"})

    async def _snapshot_file(self, request: web.Request, boxed: bool = False) -> web.StreamResponse:
        name = request.match_info["snapshot"]
        path = self._ep.clips.snapshot_path(name, boxed)
        if path is None:
            raise ApiError(404, "no_snapshot", f"no snapshot {name!r} (not written yet, failed, or deleted by "
                           "retention)")
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg", "Cache-Control": "no-store"})

    async def _snapshot_boxed(self, request: web.Request) -> web.StreamResponse:
        return await self._snapshot_file(request, boxed=True)

    async def _detect(self, request: web.Request) -> web.Response:
        data, query, form = await _image_and_params(request)
        for given in (query, form):  # each checked, also a query value a form field overrides
            _confidence(given.get("confidence"))
            self._ep.detect.check_classes(given.get("classes"))
        params = query | form
        rgb = await asyncio.get_running_loop().run_in_executor(self._decoders, read_image, data,
                                                               self._api.detect.max_pixels)
        result = await self._ep.detect.detect(rgb, _confidence(params.get("confidence")), params.get("classes"))
        return web.json_response(result)


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL byte in a header, a broken request line) as an
    ERROR with a traceback, after answering it 400. Any client can send such requests, so they
    become a count (http_requests_total{endpoint="malformed"}) and at most one warning a minute."""

    EVERY_S = 60.0

    def __init__(self, count: Callable[[str, int], None]) -> None:
        super().__init__()
        self._count, self._last = count, -self.EVERY_S

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # anything else aiohttp logs stays as it is
        status = exc.code if isinstance(exc.code, int) and 400 <= exc.code < 500 else 400
        self._count("malformed", status)
        now = time.monotonic()
        if now - self._last >= self.EVERY_S:
            self._last = now
            log_event(log, logging.WARNING, "malformed HTTP request refused; such requests are counted in "
                      "http_requests_total{endpoint=\"malformed\"} and logged at most once a minute",
                      status=status, error=str(exc.message or exc).splitlines()[0][:200],
                      client=record.args[0] if isinstance(record.args, tuple) and record.args else None)
        return False


def _lower_priority() -> None:
    """Nice the calling thread by 10 (Linux schedules threads one by one; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


def _offered_token(header: str) -> bytes | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip().encode()
    if scheme.lower() == "basic" and value.strip():
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password.encode() if password else None
    return None


FORM_FIELDS = ("image", "confidence", "classes")  # POST /v1/detect as multipart/form-data


async def _image_and_params(request: web.Request) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The image bytes, the query's parameters and a multipart upload's text fields (which win)."""
    params = dict(request.query)
    kind = request.content_type
    if kind == "multipart/form-data":
        try:
            form = await request.post()
        except (HttpProcessingError, ValueError) as exc:  # a part aiohttp cannot parse (e.g. control bytes in its headers)
            why = next((line.strip() for line in str(getattr(exc, "message", "") or exc).splitlines() if line.strip()), "")
            raise ApiError(400, "bad_form", f"cannot read the multipart form: {why[:200]}") from None
        image = form.get("image")
        if not isinstance(image, web.FileField):
            raise ApiError(400, "no_file", "the form has no file field 'image': upload the picture as one "
                           "(e.g. curl -F image=@photo.jpg)")
        for name, value in form.items():  # what the OpenAPI document says the form takes, and nothing else
            if name not in FORM_FIELDS or (name != "image" and not isinstance(value, str)):
                raise ApiError(400, "bad_field", f"form field {name!r} is not taken: the form has a file 'image' and "
                               "optional text fields 'confidence' and 'classes'")
        return image.file.read(), params, {k: v for k, v in form.items() if k != "image"}
    if kind not in ("image/jpeg", "image/png", "application/octet-stream"):
        raise ApiError(415, "unsupported_type", f"Content-Type {kind or '(none)'} is not taken: send image/jpeg or "
                       "image/png as the body, or multipart/form-data with a file")
    return await request.read(), params, {}


def _confidence(text: str | None) -> float | None:
    """The `confidence` parameter: absent (the model's), or a number in (0, 1] (not empty, not NaN)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ApiError(400, "bad_confidence", f"confidence {text!r} is not a number in (0, 1]")
    return value


def openapi(routes: list[Route], labels: Sequence[str] = ()) -> dict:
    """The OpenAPI 3.1 document of `routes`; `labels`: the model's classes (what `classes` accepts)."""
    from pipeline import __version__

    paths: dict[str, dict] = {}
    for route in routes:
        responses = dict(route.responses)
        if route.protected:
            responses |= {401: "Error", 403: "Error"}
        op: dict[str, Any] = {"summary": route.summary, "responses": {
            str(status): _response(status, kind) for status, kind in sorted(responses.items())}}
        if route.protected:
            op["security"] = [{"bearer": []}, {"basic": []}]
        names = re.findall(r"\{(\w+)\}", route.path)
        if names:
            op["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                for name in names]
        if route.json_body:
            op["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{route.json_body}"}}}}
        if route.body:
            classes = {"type": "string", **({"pattern": classes_pattern(labels)} if labels else {})}
            confidence = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
            op["parameters"] = [
                {"name": "confidence", "in": "query", "schema": confidence,
                 "description": "least confidence of a detection (default: the model's)"},
                {"name": "classes", "in": "query", "schema": classes,
                 "description": "comma-separated labels or class ids to keep (default: all)"}]
            binary = {"schema": {"type": "string", "format": "binary"}}
            op["requestBody"] = {"required": True, "content": {
                "image/jpeg": binary, "image/png": binary,
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                                   "properties": {
                    "image": {"type": "string", "format": "binary", "minLength": 1}, "confidence": confidence,
                    "classes": classes}}, "encoding": {"image": {"contentType": "image/jpeg"}}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "rtsp-pipeline", "version": __version__,
                     "description": "The daemon's HTTP API. Protected routes take Authorization: Bearer <token> "
                                    "(or HTTP Basic with the token as the password)."},
            "paths": paths,
            "components": {"schemas": SCHEMAS, "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}, "basic": {"type": "http", "scheme": "basic"}}}}


def _response(status: int, kind: str) -> dict:
    described = {200: "OK", 202: "Accepted: being recorded", 409: "Not now (the camera is not streaming, or is "
                 "recording its most clips)", 400: "Bad input", 401: "No or wrong token", 403: "Switched off: no token configured "
                 "off loopback", 404: "Not found", 413: "Too large", 415: "Not a JPEG or PNG", 500: "Inference failed",
                 503: "Busy or not ready (Retry-After)", 504: "Not inferred in time"}.get(status, "")
    if kind in SCHEMAS:
        return {"description": described, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{kind}"}}}}
    return {"description": described, "content": {kind: {}}}
