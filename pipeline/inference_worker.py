"""The inference pipeline of one engine: prepare -> infer (K threads) -> finish.

- prepare: takes a batch from the batcher, numbers it, preprocesses it into a free input buffer;
- infer: K threads run the engine concurrently (K = the engine's `concurrency`: parallel ONNX
  Runtime runs on the CPU, 1 per TensorRT context); runs release the GIL; the buffer is freed after;
- finish: puts batches back in order, postprocesses, tracks (pipeline.s5_track: the finish stage
  owns each camera's tracker), numbers results per camera (`seq`) and hands them to `emit`.

There are K + 1 input buffers, so the next batch is prepared while K are inferred (double
buffering for K = 1). Hand-offs hold few batches, so nothing queues up: when inference is the
bottleneck, frames wait in the batcher's latest-frame slots, where newer frames replace them.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.core import Batch, FrameResult, Letterbox
from pipeline.logs import log_event
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
_POLL_S = 0.2
_END = None  # passed down the stages after the last batch


@dataclass
class _Job:
    index: int  # batches are finished in this order
    batch: Batch
    preprocessor: Callable | None  # the buffer owner, returned to the pool after inference
    inputs: np.ndarray | None
    letterboxes: list[Letterbox]
    outputs: np.ndarray | None = None
    failed: bool = False


class InferenceWorker:
    """Runs batches from `next_batch` through preprocessing, the engine and postprocessing."""

    def __init__(
        self,
        next_batch: Callable[[float], Batch | None],
        preprocessors: list[Callable],
        infer: Callable[[np.ndarray], np.ndarray],
        concurrency: int,
        postprocess: Callable,
        emit: Callable[[list[FrameResult]], None],
        metrics: Metrics,
        name: str = "",
        keep_pictures: Callable[[tuple, list[FrameResult]], None] | None = None,
        track: Callable | None = None,
        postprocess_batch: Callable | None = None,
        track_batch: Callable | None = None,
        classify: Callable | None = None,
    ) -> None:
        self._next_batch = next_batch
        self._preprocessors = list(preprocessors)
        self._free: queue.Queue = queue.Queue()
        for pre in preprocessors:  # each owns one input buffer
            self._free.put(pre)
        self._infer = infer
        self._postprocess = postprocess  # (output=, letterbox=[, confidence=]) -> detections of one image
        self._postprocess_batch = postprocess_batch  # (outputs, letterboxes) -> BatchDetections: one call a batch
        self._emit = emit
        self._keep_pictures = keep_pictures  # the live preview's, when enabled
        self._track = track  # (FrameMeta, detections) -> (published detections, TrackEvents | None)
        self._track_batch = track_batch  # (metas, BatchDetections, images) -> the same for each: one call a batch
        self._classify = classify  # (frames, results) -> results with classifiers' attributes: one call a batch
        self._metrics = metrics
        stage = metrics.stage_seconds  # its children, looked up once (the finish stage runs per frame)
        self._seconds = {name: stage.labels(name) for name in ("preprocess", "infer", "track", "postprocess")}
        self._inferred: dict[str, object] = {}  # camera -> frames_inferred_total's child
        self._concurrency = concurrency
        self._to_infer: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._to_finish: queue.Queue[_Job | None] = queue.Queue(maxsize=concurrency)
        self._seq: dict[str, int] = defaultdict(int)
        self._next_index = 0
        self._stop = threading.Event()
        sfx = f"-{name}" if name else ""  # which lane (GPU) in thread dumps
        self._threads = [
            threading.Thread(target=self._prepare_loop, name=f"prepare{sfx}", daemon=True),
            *[threading.Thread(target=self._engine_loop, name=f"inference{sfx}-{i}", daemon=True)
              for i in range(concurrency)],
            threading.Thread(target=self._finish_loop, name=f"finish{sfx}", daemon=True),
        ]
        self.last_beat = time.monotonic()
        self.batches = 0
        self._prepared = 0

    @staticmethod
    def frames_in_flight(concurrency: int) -> int:
        """The most frames of one camera held at once along a lane (a batch holds at most one
        frame per camera): the batcher's slot, the source's new frame being handed over, the
        batches being prepared or inferred (bounded by the K + 1 input buffers), the K waiting to
        be finished, and the K the finish stage holds while putting them back in order."""
        return 2 + (concurrency + 1) + concurrency + concurrency

    def start(self) -> None:
        """Start the three threads."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float) -> bool:
        """Take no new batch, finish those in flight, stop; False if still running after `timeout` s."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:  # in stage order: each ends after passing _END on
            if thread.ident is not None:  # not started when the startup failed before it
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Release the preprocessors' buffers (GPU memory on the NVDEC path); after stop()."""
        for pre in self._preprocessors:
            close = getattr(pre, "close", None)
            if close is not None:
                close()

    def health(self, stuck_after_s: float = 30) -> dict:
        """Healthy while every stage thread runs and the engine gave a buffer back recently."""
        beat_age = time.monotonic() - self.last_beat
        alive = all(t.is_alive() for t in self._threads)
        return {"healthy": alive and beat_age < stuck_after_s, "threads_alive": alive,
                "seconds_since_engine_progress": round(beat_age, 3), "batches": self.batches}

    # ------------------------------------------------------------------ stages
    def _prepare_loop(self) -> None:
        while not self._stop.is_set():
            self._prepare()
        for _ in range(self._concurrency):  # one end marker per engine thread
            self._to_infer.put(_END)

    def _engine_loop(self) -> None:
        while (job := self._to_infer.get()) is not _END:
            self._run_engine(job)
        self._to_finish.put(_END)

    def _finish_loop(self) -> None:
        waiting: dict[int, _Job] = {}  # finished out of order, held until their turn
        ends = 0
        while ends < self._concurrency:
            job = self._to_finish.get()
            if job is _END:
                ends += 1
                continue
            waiting[job.index] = job
            while self._next_index in waiting:
                ready = waiting.pop(self._next_index)
                self._next_index += 1
                if not ready.failed:
                    self._finish(ready)

    def _prepare(self) -> None:
        try:
            pre = self._free.get(timeout=_POLL_S)
        except queue.Empty:
            return  # both buffers are with the engine
        self.last_beat = time.monotonic()  # the engine gives buffers back: it is not stuck
        batch = self._next_batch(_POLL_S)
        if batch is None:
            self._free.put(pre)
            return
        index = self._prepared
        self._prepared += 1
        start = time.monotonic()
        for frame in batch.frames:
            self._metrics.frame_age_seconds.observe(start - frame.ready_at)
        try:
            inputs, letterboxes = pre(batch)
        except Exception as exc:
            self._free.put(pre)
            self._drop(batch, "preprocess", exc)
            self._to_infer.put(_Job(index, batch, None, None, [], failed=True))  # keeps the order
            return
        self._seconds["preprocess"].observe(time.monotonic() - start)
        self._to_infer.put(_Job(index, batch, pre, inputs, letterboxes))  # waits while engines are busy

    def _run_engine(self, job: _Job) -> None:
        if not job.failed:
            start = time.monotonic()
            try:
                job.outputs = self._infer(job.inputs)
                self._seconds["infer"].observe(time.monotonic() - start)
            except Exception as exc:
                job.failed = True
                self._drop(job.batch, "inference", exc)
            finally:
                self._free.put(job.preprocessor)
                job.inputs = None
        self._to_finish.put(job)

    def _finish(self, job: _Job) -> None:
        start = time.monotonic()
        results, tracking = [], 0.0
        frames = job.batch.frames
        try:
            found = (self._postprocess_batch(job.outputs, job.letterboxes)
                     if self._postprocess_batch is not None else None)
            numbered = [i for i, frame in enumerate(frames) if frame.reply is None]
            tracked = None
            if found is not None and self._track_batch is not None and numbered:
                began = time.monotonic()  # every frame of the batch tracked at once
                tracked = self._track_batch([frames[i].meta for i in numbered], found, numbered,
                                            [frames[i].image for i in numbered])
                tracking = time.monotonic() - began
                for _ in numbered:
                    self._seconds["track"].observe(tracking / len(numbered))
            for i, frame in enumerate(frames):
                if frame.reply is not None:  # a /v1/detect image: answered, never numbered or published
                    self._answer(frame.reply, job.outputs[i], job.letterboxes[i])
            for k, i in enumerate(numbered):
                frame = frames[i]
                cam = frame.meta.camera_id
                tracks = None
                if tracked is not None:
                    detections, tracks = tracked[k]
                else:
                    detections = (found.for_image(i) if found is not None
                                  else self._postprocess(output=job.outputs[i], letterbox=job.letterboxes[i]))
                    if self._track is not None:
                        began = time.monotonic()
                        detections, tracks = self._track(frame.meta, detections, frame.image)
                        spent = time.monotonic() - began
                        tracking += spent
                        self._seconds["track"].observe(spent)
                results.append(FrameResult(frame.meta, self._seq[cam], detections, tracks))
                self._seq[cam] += 1
                inferred = self._inferred.get(cam)
                if inferred is None:
                    inferred = self._inferred[cam] = self._metrics.frames_inferred.labels(cam)
                inferred.inc()
            if self._classify is not None and results:
                began = time.monotonic()
                results = self._classify([frames[i] for i in numbered], results)
                tracking += time.monotonic() - began  # timed as its own stage ("classify")
        except Exception as exc:
            self._drop(job.batch, "postprocess", exc)
            return
        self._seconds["postprocess"].observe(time.monotonic() - start - tracking)
        self._metrics.batch_size.observe(len(job.batch.frames))
        self.batches += 1
        if self._keep_pictures is not None:
            self._keep_pictures([f for f in job.batch.frames if f.reply is None], results)
        self._emit(results)

    def _answer(self, reply, output, letterbox: Letterbox) -> None:
        try:
            found = self._postprocess(output=output, letterbox=letterbox, confidence=reply.confidence)
            reply.deliver(tuple(d for d in found if reply.classes is None or d.class_id in reply.classes))
        except Exception as exc:
            reply.deliver(exc)

    # ------------------------------------------------------------------ helpers
    def _drop(self, batch: Batch, stage: str, exc: Exception) -> None:
        """One bad batch must not stop inference for every camera: count, log, go on."""
        for frame in batch.frames:
            if frame.reply is not None:
                frame.reply.deliver(exc)
                continue
            self._metrics.frames_dropped.labels(frame.meta.camera_id, f"{stage}_error").inc()
        log_event(log, logging.ERROR, f"{stage} failed; batch dropped", frames=len(batch.frames),
                  cameras=sorted({f.meta.camera_id for f in batch.frames}), error=repr(exc))
