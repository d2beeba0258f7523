"""Scenes built to break trackers, from a generator of their own: not the one the detector was
trained on (scripts/lab/scenes.py's `_things` and `_background`, which it also shares with the
tracking scenes the tracker was tuned on).

    .venv/bin/python -m scripts.lab.breaker_scenes --seed 31 --size 960x540 --out clips/breaker31.mp4

What differs from the training scenes: the background (wide gradients, muted, soft stripes, with
long thin dark shelves: "furniture" of no class's shape), the objects' colours (pastel and dark as well as vivid) and sizes
(smaller: 8-13 % of the height), and the motion, scripted to hurt:
- objects that stop for 1.6-2.4 s and go on;
- pairs that cross, one passing in front of the other, of one class and of two classes that look
  alike at a distance (disc and square of one colour and size);
- objects that enter, cross and leave.
Injected at known rates, per object and frame (25 fps): **class flicker** (`flicker`: the object
drawn as another class's shape for that frame; the truth keeps its real class, so a tracker's
voted class is what must match) and **misses** (`miss`: not drawn; no truth that frame).

The ground truth is scripts/lab/scenes.py's format (`Truth.load`), with each object's identity.
"""
from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from scripts.lab.scenes import CLASSES, Scene, Thing, cached_clip, scene_cli

GENERATOR = "breaker-2"  # bump when a seed's pictures change


class BreakerScene(Scene):
    """A tracker-breaking scene (see the module docstring): Scene's rendering and truth format,
    this module's background, objects and injected flicker and misses."""

    def __init__(self, seed: int, width: int, height: int, fps: int = 25, frames: int = 375,
                 flicker: float = 0.05, miss: float = 0.05) -> None:
        self.seed, self.width, self.height, self.fps, self.frames = seed, width, height, fps, frames
        rng = np.random.default_rng(seed ^ 0x5EED)
        self.background = _background(rng, width, height)
        self._noise = [rng.normal(0, rng.uniform(2, 5), (height, width, 1)).astype(np.float32) for _ in range(3)]
        self._flicker = rng.uniform(-5, 5, frames).astype(np.float32)
        self.things = _things(rng, width, height, frames)
        n = len(self.things)
        self.flickers = {(i, f): int((t.class_id + rng.integers(1, len(CLASSES))) % len(CLASSES))
                         for i, t in enumerate(self.things) for f in range(frames) if rng.random() < flicker}
        self.misses = {(i, f) for i in range(n) for f in range(frames) if rng.random() < miss}

    def _draw(self, img, ids, index, thing: Thing, frame: int):
        if (index, frame) in self.misses:
            return None
        shown = self.flickers.get((index, frame))
        if shown is None:
            return super()._draw(img, ids, index, thing, frame)
        region = super()._draw(img, ids, index, replace(thing, class_id=shown), frame)
        return region  # the truth keeps the thing's own class (Scene._truth reads `thing`)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A wide two-colour gradient, muted, with soft stripes and a few long dark shelves (float32 HxWx3)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    a, b = (rng.uniform(70, 150) + rng.uniform(-25, 25, 3) for _ in range(2))  # greys, lightly tinted
    angle = rng.uniform(0, math.pi)
    u = ((xx * math.cos(angle) + yy * math.sin(angle)) / max(width, height))[..., None]
    img = (a * (1 - u) + b * u).astype(np.float32)
    period, slant = rng.uniform(40, 120), rng.uniform(0, math.pi)  # soft stripes (a checker is squares)
    stripes = np.sin((xx * math.cos(slant) + yy * math.sin(slant)) * (2 * math.pi / period))
    img += (stripes * rng.uniform(3, 8))[..., None]
    for _ in range(int(rng.integers(2, 5))):  # furniture: long thin shelves (squarish ones, or bars
        w, h = rng.uniform(0.25, 0.5) * width, rng.uniform(0.015, 0.04) * height  # that meet, are squares)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        img[int(y):int(y + h), int(x):int(x + w)] *= rng.uniform(0.45, 0.75)
    return np.clip(img, 0, 255)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Pastel, dark or vivid: not only the training scenes' saturated colours."""
    hue, kind = rng.uniform(0, 1), int(rng.integers(0, 3))
    sat, val = ((0.35, 0.95), (0.8, 0.45), (0.9, 0.95))[kind]
    i, f = int(hue * 6), hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    r, g, b = ((val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q))[i % 6]
    return int(255 * r), int(255 * g), int(255 * b)


def _things(rng: np.random.Generator, width: int, height: int, frames: int) -> list[Thing]:
    things: list[Thing] = []
    unit = max(width, height) / 625  # px per frame at speed 1
    margin = 0.12 * height

    def add(class_id: int, waypoints, colour=None, size=None) -> None:
        things.append(Thing(class_id, size or float(rng.uniform(0.08, 0.13) * height), colour or _colour(rng),
                            0.0, 0.0, 0.0, 0.0, float(len(things)), path=tuple(waypoints)))

    def legs(points, start: float, speed: float, stops: dict[int, float]):
        """Waypoints through `points` at `speed`, waiting stops[i] frames at point i."""
        out, now = [], start
        for i, point in enumerate(points):
            if i:
                now += math.dist(points[i - 1], point) / (speed * unit)
            out.append((now, *point))
            if i in stops:
                now += stops[i]
                out.append((now, *point))
        return out

    for k in range(2):  # stop and go: in, stop 1.6-2.4 s in the middle, out
        y = rng.uniform(0.25, 0.75) * height
        side = (-margin, width + margin) if k % 2 == 0 else (width + margin, -margin)
        mid = (rng.uniform(0.35, 0.65) * width, y + rng.uniform(-0.1, 0.1) * height)
        add(int(rng.integers(0, len(CLASSES))), legs([(side[0], y), mid, (side[1], y)], rng.uniform(0, 0.3) * frames,
                                                    rng.uniform(1.5, 3), {1: rng.uniform(1.6, 2.4) * 25}))
    for same in (True, False):  # crossing pairs: one class; disc and square that look alike
        y = rng.uniform(0.3, 0.7) * height
        start, speed = rng.uniform(0.1, 0.5) * frames, rng.uniform(2, 3)
        colour, size = _colour(rng), float(rng.uniform(0.08, 0.12) * height)
        classes = (c := int(rng.integers(0, len(CLASSES))), c) if same else (0, 1)
        add(classes[0], legs([(-margin, y - 0.08 * height), (width + margin, y + 0.08 * height)], start, speed, {}),
            colour, size)
        add(classes[1], legs([(width + margin, y - 0.04 * height), (-margin, y + 0.12 * height)], start, speed, {}),
            colour, size)
    for k in range(3):  # plain crossers, up or down the picture
        x = rng.uniform(0.15, 0.85) * width
        a, b = (x, -margin), (x + rng.uniform(-0.25, 0.25) * width, height + margin)
        add(int(rng.integers(0, len(CLASSES))), legs([a, b] if k % 2 else [b, a], rng.uniform(0, 0.6) * frames,
                                                    rng.uniform(1.5, 3.5), {}))
    return things


def breaker_clip(folder: Path, seed: int, width: int, height: int, frames: int = 375) -> Path:
    """A breaker scene's clip and truth (cached in `folder`)."""
    return cached_clip(folder, GENERATOR, BreakerScene, seed, width, height, frames)


def main() -> int:
    return scene_cli(__doc__.splitlines()[0], BreakerScene,
                     lambda s: f"{len(s.things)} objects, {len(s.flickers)} flickers, {len(s.misses)} misses")


if __name__ == "__main__":
    sys.exit(main())
