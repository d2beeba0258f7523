"""Synthetic camera scenes with known boxes: deterministic from a seed, rendered to H.264 with
per-frame ground truth.

    .venv/bin/python -m scripts.lab.scenes --seed 7 --size 1280x720 --seconds 8 --out clips/cam7.mp4

Each scene has objects of four classes (disc, square, triangle, cross) in random colours, moving
in straight lines across a noisy, cluttered background; they enter and leave the frame and pass
in front of each other (drawn by depth). Distractors move among them: thin ellipses, rings and
soft colour blobs in the same vivid colours, which belong to no class (no truth; a detection of
one is a false positive) and hide what is behind them. Sensor noise and brightness flicker change
every frame.

Ground truth (`<clip>.truth.json`): for every frame index, each object's class and box in source
pixels (clipped to the frame) and its visible fraction. Objects less than half visible (hidden by
others or outside the frame) are marked `difficult`: a detection of one is neither a hit nor a
false positive, and missing one is no miss.

Matching a frame that comes out of the pipeline to its truth: the GStreamer test server restarts a
clip's timestamps at 0 each time it loops (and when a client starts playing), and FFmpeg reports
them as `frame.pts`, so the truth frame is `round(pts * fps) mod frame_count` (`Truth.at_pts`).
A frame that arrives without a timestamp is not inferred (see the daemon's `no_timestamp` drops),
so every published pts is a real media time.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2  # bump when a seed's pictures change (2: distractors), so cached clips are redone
CLASSES = ("disc", "square", "triangle", "cross")
DISTRACTORS = ("ellipse", "ring", "blob")  # drawn with class_id -1, -2, -3; never in the truth
DIFFICULT_BELOW = 0.5  # visible fraction under which an object is "difficult"
# colour families (the colour classifier's classes, engines/README.md): hue sectors of 60 degrees
# centred on the primaries and secondaries, of the colour an object is drawn in
COLOUR_FAMILIES = ("red", "yellow", "green", "cyan", "blue", "magenta")


def colour_family(rgb: tuple[int, int, int]) -> int:
    """The index in COLOUR_FAMILIES of an RGB colour's hue."""
    import colorsys

    hue, _, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return int((hue * 6 + 0.5) % 6)


@dataclass(frozen=True)
class Thing:
    """One object's whole life in a scene."""

    class_id: int  # < 0: a distractor, DISTRACTORS[-1 - class_id]
    size: float  # pixels: diameter / side / height
    color: tuple[int, int, int]
    x0: float  # centre at frame 0 (may be off-frame)
    y0: float
    vx: float  # pixels per frame
    vy: float
    depth: float  # drawn in increasing depth order: larger is in front
    angle: float = 0.0  # distractors: ellipse orientation (radians)
    path: tuple[tuple[float, float, float], ...] = ()  # (frame, x, y) waypoints: moves between them instead

    def centre(self, frame: int) -> tuple[float, float]:
        if not self.path:
            return self.x0 + self.vx * frame, self.y0 + self.vy * frame
        return _along(self.path, frame)


@dataclass(frozen=True)
class TruthBox:
    """One object in one frame."""

    class_id: int
    label: str
    bbox: tuple[float, float, float, float]
    visible: float
    difficult: bool
    object_id: int = -1  # which object of the scene (its index): its identity, for tracking


class Scene:
    """A deterministic scene: background, objects and their motion, from a seed."""

    def __init__(self, seed: int, width: int, height: int, fps: int = 25, frames: int = 200,
                 density: float = 5.0, distractors: float = 1.5, tracking: bool = False) -> None:
        """`tracking`: scripted objects that break trackers (see tracking_things) instead of the
        straight-line ones; a seed's scene without it is unchanged."""
        self.seed, self.width, self.height, self.fps, self.frames = seed, width, height, fps, frames
        rng = np.random.default_rng(seed)
        self.background = _background(rng, width, height)
        self._noise = [rng.normal(0, rng.uniform(3, 8), (height, width, 1)).astype(np.float32)
                       for _ in range(4)]
        self.things = (tracking_things(rng, width, height, frames) if tracking
                       else _things(rng, width, height, frames, density))
        self._flicker = rng.uniform(-8, 8, frames).astype(np.float32)
        # drawn last from the generator, so a seed's objects do not depend on the distractors
        self.things += _distractors(rng, width, height, frames, distractors, len(self.things))

    # ---------------------------------------------------------------- rendering
    def render(self, frame: int) -> tuple[np.ndarray, list[TruthBox]]:
        """The RGB picture (uint8 HxWx3) of one frame and its truth."""
        img = self.background.copy()
        ids = np.full((self.height, self.width), -1, np.int16)
        drawn = []
        for index, thing in sorted(enumerate(self.things), key=lambda it: it[1].depth):
            region = self._draw(img, ids, index, thing, frame)
            if region is not None:
                drawn.append((index, thing, *region))
        noise = self._noise[frame % len(self._noise)]
        shift = (frame * 7919) % self.width
        img += np.roll(noise, shift, axis=1) + self._flicker[frame]
        np.clip(img, 0, 255, out=img)
        truth = [self._truth(ids, index, thing, box, area) for index, thing, box, area in drawn
                 if thing.class_id >= 0]
        return img.astype(np.uint8), truth

    def _draw(self, img, ids, index, thing: Thing, frame: int):
        cx, cy = thing.centre(frame)
        half = thing.size / 2
        x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
        if x2 <= 0 or y2 <= 0 or x1 >= self.width or y1 >= self.height:
            return None
        if thing.class_id < 0:
            self._draw_distractor(img, ids, index, thing, cx, cy)
            return None
        mask, ox, oy, full_area = _shape_mask(thing.class_id, cx, cy, thing.size, self.width, self.height)
        if mask is None or full_area == 0:
            return None
        h, w = mask.shape
        img[oy:oy + h, ox:ox + w][mask] = thing.color
        ids[oy:oy + h, ox:ox + w][mask] = index
        ys, xs = np.nonzero(mask)
        box = (float(ox + xs.min()), float(oy + ys.min()), float(ox + xs.max() + 1), float(oy + ys.max() + 1))
        return box, full_area

    def _draw_distractor(self, img, ids, index, thing: Thing, cx: float, cy: float) -> None:
        alpha, ox, oy = _distractor_alpha(thing, cx, cy, self.width, self.height)
        if alpha is None:
            return
        h, w = alpha.shape
        region = img[oy:oy + h, ox:ox + w]
        a = alpha[..., None]
        region *= 1 - a
        region += a * np.asarray(thing.color, np.float32)
        ids[oy:oy + h, ox:ox + w][alpha >= 0.5] = index  # hides what is behind it

    def _truth(self, ids, index, thing: Thing, box, full_area) -> TruthBox:
        x1, y1, x2, y2 = (int(v) for v in box)
        visible = float((ids[y1:y2, x1:x2] == index).sum()) / full_area
        return TruthBox(thing.class_id, CLASSES[thing.class_id], box, round(visible, 3),
                        visible < DIFFICULT_BELOW, index)

    # ---------------------------------------------------------------- output
    def write(self, clip: Path, gop: int = 50, bitrate: str | None = None, codec: str = "libx264",
              bframes: int = 0, audio: bool = False) -> Path:
        """Encode the scene to an MP4 (ffmpeg) and its truth to `<clip>.truth.json`: H.264, or
        H.265 with `codec` "libx265"; `bframes` B-frames in a row; `audio`: an AAC track beside
        (a tone). A fixed GOP as cameras use (scene-cut detection off: the scenes' brightness
        flicker made x264 encode most frames as I-frames). Quality-driven by default (CRF 23);
        `bitrate` (e.g. "6M") caps it as a camera's encoder does."""
        clip = Path(clip)
        clip.parent.mkdir(parents=True, exist_ok=True)
        rate = ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate] if bitrate else []
        if codec == "libx265":
            video = ["-c:v", "libx265", "-preset", "veryfast", "-tag:v", "hvc1", "-x265-params",
                     f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"]
        else:
            video = ["-c:v", codec, "-preset", "veryfast", "-g", str(gop), "-sc_threshold", "0", "-bf", str(bframes)]
        tone = (["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={self.frames / self.fps}"]
                if audio else [])
        tracks = ["-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "64k"] if audio else []
        encoder = subprocess.Popen(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
             "-s", f"{self.width}x{self.height}", "-r", str(self.fps), "-i", "-", *tone, *tracks,
             *video, *rate, "-pix_fmt", "yuv420p", str(clip)],
            stdin=subprocess.PIPE,
        )
        frames = []
        for i in range(self.frames):
            img, truth = self.render(i)
            encoder.stdin.write(img.tobytes())  # type: ignore[union-attr]
            frames.append([asdict(t) for t in truth])
        encoder.stdin.close()  # type: ignore[union-attr]
        if encoder.wait() != 0:
            raise RuntimeError(f"ffmpeg failed to encode {clip}")
        truth_file = truth_path(clip)
        truth_file.write_text(json.dumps({
            "seed": self.seed, "width": self.width, "height": self.height, "fps": self.fps,
            "frame_count": self.frames, "classes": list(CLASSES), "frames": frames,
        }))
        return clip


def cached_clip(folder: Path, generator: str, make_scene, seed: int, width: int, height: int, frames: int) -> Path:
    """A scene's clip and truth, made by make_scene(seed, width, height, frames=frames) once and
    kept in `folder` under the generator's name (bump the name when a seed's pictures change)."""
    clip = Path(folder) / f"{generator}-{seed}-{width}x{height}-{frames}.mp4"
    if not clip.exists() or not truth_path(clip).exists():
        make_scene(seed, width, height, frames=frames).write(clip)
    return clip


def scene_cli(description: str, make_scene, summary) -> int:
    """The command line of a scene generator: --seed, --size, --seconds, --out; prints
    summary(scene) after the clip and its truth are written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--size", default="960x540", help="WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    scene = make_scene(args.seed, width, height, frames=int(args.seconds * 25))
    clip = scene.write(args.out)
    print(f"wrote {clip} and {truth_path(clip)}: {summary(scene)}")
    return 0


def truth_path(clip: Path) -> Path:
    """Where a clip's ground truth lives."""
    return Path(clip).with_suffix(".truth.json")


class Truth:
    """Ground truth of one clip, looked up by frame index or by pipeline pts."""

    def __init__(self, frames: list[list[TruthBox]], fps: int, width: int, height: int) -> None:
        self.frames, self.fps, self.width, self.height = frames, fps, width, height
        self.frame_count = len(frames)

    @classmethod
    def load(cls, path: Path) -> Truth:
        """Read a clip's `.truth.json`."""
        data = json.loads(Path(path).read_text())
        frames = [[TruthBox(o["class_id"], o["label"], tuple(o["bbox"]), o["visible"], o["difficult"],
                            o.get("object_id", -1)) for o in frame] for frame in data["frames"]]
        return cls(frames, data["fps"], data["width"], data["height"])

    @classmethod
    def of_scene(cls, scene: Scene) -> Truth:
        """Truth straight from a scene, without encoding it."""
        return cls([scene.render(i)[1] for i in range(scene.frames)], scene.fps, scene.width, scene.height)

    def index_of(self, pts: float) -> int:
        """The clip frame shown at media time `pts` (the server loops the clip from 0)."""
        return round(pts * self.fps) % self.frame_count

    def at_pts(self, pts: float, offset: int = 0) -> list[TruthBox]:
        """Truth of the frame at `pts` (`offset` frames later, for checking the mapping)."""
        return self.frames[(self.index_of(pts) + offset) % self.frame_count]


# -------------------------------------------------------------------- scene content

def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth multi-octave colour noise plus soft clutter (stripes and blobs), float32 HxWx3."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((3, 70), (9, 35), (27, 18), (81, 9)):
        coarse = rng.uniform(-1, 1, (cells * height // width + 2, cells + 2, 3)).astype(np.float32)
        img += amp * _upsample(coarse, width, height)
    img += rng.uniform(60, 170, 3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):  # soft diagonal stripes
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.05, 0.3) * width
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        img += (rng.uniform(5, 20) * wave)[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    for _ in range(int(rng.integers(3, 9))):  # soft blobs, not shaped like any class
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.25) * height
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img += (blob * rng.uniform(-50, 50))[..., None]
    return np.clip(img, 0, 255)


def _upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to HxW (numpy only)."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1.001, height)
    xs = np.linspace(0, gw - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _things(rng: np.random.Generator, width: int, height: int, frames: int, density: float) -> list[Thing]:
    """Objects that cross the frame; about `density` are in view at any time."""
    things = []
    speed_unit = max(width, height) / 25  # px per second at speed 1
    count = int(density * 2.5 + rng.integers(0, 3))
    for depth in range(count):
        size = float(rng.uniform(0.07, 0.22) * height)
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.8, 3.5) * speed_unit / 25  # px per frame
        vx, vy = speed * math.cos(angle), speed * math.sin(angle)
        # place the object so that it is in view at a random time of the clip
        t_mid = rng.uniform(0, frames)
        mx, my = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        color = _vivid(rng)
        things.append(Thing(int(rng.integers(0, len(CLASSES))), size, color,
                            mx - vx * t_mid, my - vy * t_mid, vx, vy, depth))
    return things


def tracking_things(rng: np.random.Generator, width: int, height: int, frames: int) -> list[Thing]:
    """Objects scripted to break trackers, all entering and leaving the frame: pairs of one class
    whose paths cross (one passes in front of the other), objects that stop and go, objects that
    turn and change speed, and plain crossers; distractors drawn among them hide them at times."""
    things: list[Thing] = []
    unit = max(width, height) / 25 / 25  # px per frame at speed 1 (as _things)

    def add(class_id: int, waypoints: list[tuple[float, float, float]]) -> None:
        size = float(rng.uniform(0.08, 0.16) * height)
        things.append(Thing(class_id, size, _vivid(rng), 0.0, 0.0, 0.0, 0.0, float(len(things)),
                            path=tuple(waypoints)))

    def across(start: float, speed: float, a: tuple[float, float], b: tuple[float, float]):
        """Waypoints from a to b at `speed` (x unit) starting at frame `start`."""
        length = math.dist(a, b)
        return [(start, *a), (start + length / (speed * unit), *b)]

    margin = 0.15 * height
    for k in range(2):  # same class, paths crossing in the middle of the picture
        cls = int(rng.integers(0, len(CLASSES)))
        y = rng.uniform(0.3, 0.7) * height
        t = rng.uniform(0.05, 0.45) * frames
        speed = rng.uniform(2, 3.5)
        add(cls, across(t, speed, (-margin, y - 0.1 * height), (width + margin, y + 0.1 * height)))
        add(cls, across(t, speed, (width + margin, y - 0.05 * height), (-margin, y + 0.15 * height)))
    for k in range(2):  # stop and go: in, wait a second, on, wait, out
        y = rng.uniform(0.25, 0.75) * height
        t = rng.uniform(0, 0.4) * frames
        speed = rng.uniform(1.5, 3) * unit
        pts = [(-margin, y), (0.35 * width, y + 0.05 * height), (0.65 * width, y - 0.05 * height), (width + margin, y)]
        waypoints, now = [], t
        for i, point in enumerate(pts):
            if i:
                now += math.dist(pts[i - 1], point) / speed
            waypoints.append((now, *point))
            if 0 < i < len(pts) - 1:
                now += rng.uniform(0.8, 1.6) * 25
                waypoints.append((now, *point))
        add(int(rng.integers(0, len(CLASSES))), waypoints)
    for k in range(2):  # turns and changes of speed: down the picture, across, back up
        x = rng.uniform(0.2, 0.4) * width
        t = rng.uniform(0, 0.4) * frames
        pts = [(x, -margin), (x, 0.55 * height), (x + 0.4 * width, 0.65 * height), (x + 0.45 * width, -margin)]
        speeds = [rng.uniform(1, 2), rng.uniform(3, 4.5), rng.uniform(1, 2)]
        waypoints, now = [(t, *pts[0])], t
        for i in range(1, len(pts)):
            now += math.dist(pts[i - 1], pts[i]) / (speeds[i - 1] * unit)
            waypoints.append((now, *pts[i]))
        add(int(rng.integers(0, len(CLASSES))), waypoints)
    for k in range(3):  # plain crossers, top to bottom or bottom to top
        x = rng.uniform(0.15, 0.85) * width
        t = rng.uniform(0, 0.6) * frames
        a, b = (x, -margin), (x + rng.uniform(-0.2, 0.2) * width, height + margin)
        add(int(rng.integers(0, len(CLASSES))), across(t, rng.uniform(1.5, 3.5), *((a, b) if k % 2 else (b, a))))
    return things


def _along(path: tuple[tuple[float, float, float], ...], frame: float) -> tuple[float, float]:
    """Position on piecewise-linear waypoints (frame, x, y); before the first and after the last
    the object goes on as on its first and last leg (it enters and leaves the picture)."""
    legs = list(zip(path, path[1:]))
    leg = legs[0] if frame <= path[0][0] else next((g for g in legs if frame <= g[1][0]), legs[-1])
    (f0, x0, y0), (f1, x1, y1) = leg
    u = (frame - f0) / (f1 - f0) if f1 > f0 else 0.0
    return x0 + (x1 - x0) * u, y0 + (y1 - y0) * u


def _distractors(rng: np.random.Generator, width: int, height: int, frames: int, density: float,
                 layers: int) -> list[Thing]:
    """Things of no class (about `density` in view), at random depths among the objects."""
    if density <= 0:
        return []
    things = []
    speed_unit = max(width, height) / 25
    for _ in range(int(density * 2.5 + rng.integers(0, 2))):
        size = float(rng.uniform(0.07, 0.22) * height)
        angle = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(0.8, 3.5) * speed_unit / 25
        vx, vy = speed * math.cos(angle), speed * math.sin(angle)
        t_mid = rng.uniform(0, frames)
        mx, my = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        kind = int(rng.integers(0, len(DISTRACTORS)))
        things.append(Thing(-1 - kind, size, _vivid(rng), mx - vx * t_mid, my - vy * t_mid, vx, vy,
                            float(rng.uniform(-0.5, layers)), float(rng.uniform(0, math.pi))))
    return things


def _distractor_alpha(thing: Thing, cx: float, cy: float, width: int, height: int):
    """Opacity (float HxW in [0, 1]) of a distractor inside the frame, and its offset."""
    half = thing.size / 2
    x1, y1 = max(int(math.floor(cx - half)), 0), max(int(math.floor(cy - half)), 0)
    x2, y2 = min(int(math.ceil(cx + half)), width), min(int(math.ceil(cy + half)), height)
    if x2 <= x1 or y2 <= y1:
        return None, 0, 0
    yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    kind = DISTRACTORS[-1 - thing.class_id]
    if kind == "ellipse":  # thin: 3-4 times longer than wide, any orientation
        c, s = math.cos(thing.angle), math.sin(thing.angle)
        u, v = (dx * c + dy * s) / half, (dy * c - dx * s) / (half / 3.5)
        alpha = (u * u + v * v <= 1).astype(np.float32)
    elif kind == "ring":  # hollow: the background shows through the middle
        r = np.sqrt(dx * dx + dy * dy)
        alpha = ((r <= half) & (r >= 0.65 * half)).astype(np.float32)
    else:  # soft round blob with no edge
        alpha = 0.9 * np.exp(-(dx * dx + dy * dy) / (2 * (half / 2.5) ** 2))
    return alpha, x1, y1


def _vivid(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, so objects stand out from the muted background."""
    hue = rng.uniform(0, 6)
    c = [0.0, 0.0, 0.0]
    i, f = int(hue), hue - int(hue)
    c[i % 3] = 1.0
    c[(i + 1) % 3] = f if i % 2 == 0 else 1 - f
    value = rng.uniform(0.55, 1.0)
    return tuple(int(40 + 215 * value * ch) for ch in c)  # type: ignore[return-value]


def _shape_mask(class_id: int, cx: float, cy: float, size: float, width: int, height: int):
    """Boolean mask of a shape inside the frame, its offset, and the shape's full area (px)."""
    half = size / 2
    x1, y1 = int(math.floor(cx - half)), int(math.floor(cy - half))
    x2, y2 = int(math.ceil(cx + half)), int(math.ceil(cy + half))
    yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    if class_id == 0:  # disc
        full = dx * dx + dy * dy <= half * half
    elif class_id == 1:  # square
        full = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif class_id == 2:  # triangle, apex up
        rel = (dy + half) / size  # 0 at the top, 1 at the bottom
        full = (rel >= 0) & (rel <= 1) & (np.abs(dx) <= rel * half)
    else:  # cross (plus sign), arms a third of the size wide
        arm = size / 6
        full = ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= half))
    area = int(full.sum())
    cx1, cy1 = max(x1, 0), max(y1, 0)
    cx2, cy2 = min(x2, width), min(y2, height)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, 0, 0, area
    mask = full[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
    if not mask.any():
        return None, 0, 0, area
    return mask, cx1, cy1, area


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    scene = Scene(args.seed, width, height, args.fps, int(args.seconds * args.fps))
    clip = scene.write(args.out)
    print(f"wrote {clip} and {truth_path(clip)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
