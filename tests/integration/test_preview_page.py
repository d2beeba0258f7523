"""The live preview page in a real headless Chromium (driven over the DevTools protocol): it loads
with the API token, shows every camera with its state, and each camera's annotated picture keeps
updating; without the token nothing of it is served. No JPEG is made before anyone opens the page."""
import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import pytest

from scripts.lab.cameras import RtspServer
from scripts.lab.common import API_TOKEN, REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, http_request, metric_values
from scripts.lab.scenes import Scene

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
SCREENSHOT = os.environ.get("PIPELINE_PREVIEW_SCREENSHOT")  # where to keep the screenshot (docs/preview.png)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is required for the preview page test (apt-get install chromium; scripts/setup.sh does)")


@pytest.fixture(scope="module")
def scene_cameras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    clips = {}
    for name, seed, (w, h) in (("lobby", 8101, (1280, 720)), ("yard", 8102, (960, 540)), ("dock", 8103, (800, 600))):
        clips[name] = Scene(seed, w, h, fps=25, frames=100).write(folder / f"{name}.mp4")
    with RtspServer(clips) as server:
        yield server


class Browser:
    """Headless Chromium and one page of it, over the DevTools protocol's websocket."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}", "--window-size=1280,900",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0

    def page_socket_url(self) -> str:
        def pages():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    return [p for p in json.load(r) if p["type"] == "page"]
            except OSError:
                return []
        return wait_for(pages, 30, "Chromium's DevTools endpoint")[0]["webSocketDebuggerUrl"]

    async def call(self, ws, method: str, **params) -> dict:
        self._id += 1
        await ws.send_json({"id": self._id, "method": method, "params": params})
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("id") == self._id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("DevTools connection closed")

    async def evaluate(self, ws, expression: str):
        result = await self.call(ws, "Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


CARDS = """JSON.stringify([...document.querySelectorAll('.cam')].map(c => ({
  id: c.dataset.camera, seq: c.dataset.seq, state: c.querySelector('.state').textContent,
  src: c.querySelector('img').currentSrc, loaded: c.querySelector('img').complete,
  width: c.querySelector('img').naturalWidth, stats: c.querySelector('.stats').textContent})))"""


async def poll(browser, ws, until, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cards = json.loads(await browser.evaluate(ws, CARDS) or "[]")
        if until(cards):
            return cards
        await asyncio.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {cards}")


def test_preview_page_shows_every_camera_and_its_pictures_update(tmp_path, scene_cameras, broker):
    port = free_port()
    cams = ["lobby", "yard", "dock"]
    path = daemon_config(tmp_path / "preview.yaml", {"path": MODEL, "input_size": 320, "confidence": 0.35},
                         broker.bootstrap, [(c, scene_cameras.url(c), 5) for c in cams],
                         topic=f"preview-{uuid.uuid4().hex[:8]}", metrics_port=port)
    daemon = Daemon(path, tmp_path / "preview.log", env={"RTSP_PIPELINE_API_TOKENS": API_TOKEN})
    daemon.start()
    browser = None

    def jpegs() -> float:
        return metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_preview_jpegs_total").get("", -1)
    try:
        def inferred() -> dict:
            return metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
        wait_for(lambda: len(inferred()) == 3 and min(inferred().values()) >= 10, 60, "frames of every camera")
        assert jpegs() == 0, "no JPEG is made while nobody looks"
        for page in ("/preview", "/preview/state.json", "/preview/lobby.jpg"):  # nothing without the token
            assert http_request("GET", f"http://127.0.0.1:{port}{page}")[0] == 401, page
        browser = Browser(tmp_path / "chromium-profile")

        async def drive():
            async with aiohttp.ClientSession() as session, session.ws_connect(browser.page_socket_url(),
                                                                              max_msg_size=0) as ws:
                await browser.call(ws, "Page.enable")
                await browser.call(ws, "Network.enable")  # every request of the page carries the token
                await browser.call(ws, "Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {API_TOKEN}"})
                await browser.call(ws, "Page.navigate", url=f"http://127.0.0.1:{port}/preview")
                first = await poll(browser, ws, lambda cs: len(cs) == 3 and all(
                    c["width"] > 0 and c["state"] == "streaming" for c in cs), 60, "three cameras with pictures")
                later = await poll(browser, ws, lambda cs: all(
                    c["width"] > 0 and c["loaded"] and c["src"] != f["src"] and int(c["seq"]) > int(f["seq"])
                    for c, f in zip(cs, first)), 30, "every picture to be replaced by a newer one")
                shot = await browser.call(ws, "Page.captureScreenshot", format="png")
                return first, later, base64.b64decode(shot["data"])
        first, later, png = asyncio.run(drive())
    finally:
        if browser is not None:
            browser.close()
        code = daemon.stop()
    assert code == 0
    assert sorted(c["id"] for c in first) == sorted(cams)
    for card in later:
        assert card["src"].startswith(f"http://127.0.0.1:{port}/preview/{card['id']}.jpg?seq=")
        assert " fps · " in card["stats"] and "ms capture→inferred" in card["stats"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    if SCREENSHOT:
        Path(SCREENSHOT).write_bytes(png)


def test_the_preview_can_be_switched_off(tmp_path, scene_cameras, broker):
    port = free_port()
    path = daemon_config(tmp_path / "nopreview.yaml", MODEL, broker.bootstrap, [("lobby", scene_cameras.url("lobby"), 5)],
                         topic=f"nopreview-{uuid.uuid4().hex[:8]}", metrics={"listen": f"127.0.0.1:{port}", "preview": False})
    daemon = Daemon(path, tmp_path / "nopreview.log")
    daemon.start()
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "the daemon")
        assert http_get(f"http://127.0.0.1:{port}/preview")[0] == 404
    finally:
        daemon.stop()
