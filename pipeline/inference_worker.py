"""The inference thread: batches in, preprocess -> engine -> postprocess, numbered results out.

One such thread per engine (per GPU on the GPU path); it owns the engine. Results leave through
`emit`, which must not block (the Runtime hands them to the event loop).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from pipeline.core import Batch, FrameResult
from pipeline.logs import log_event
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)


class InferenceWorker:
    """Runs batches from `next_batch` through `preprocess`, `engine.infer` and `postprocess`."""

    def __init__(
        self,
        next_batch: Callable[[float], Batch | None],
        preprocess: Callable,
        infer: Callable,
        postprocess: Callable,
        emit: Callable[[list[FrameResult]], None],
        metrics: Metrics,
    ) -> None:
        self._next_batch = next_batch
        self._preprocess = preprocess
        self._infer = infer
        self._postprocess = postprocess
        self._emit = emit
        self._metrics = metrics
        self._seq: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.last_beat = time.monotonic()
        self.batches = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Finish the current batch and stop; False if still running after `timeout` s."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            batch = self._next_batch(0.5)
            if batch is None:
                continue
            try:
                results = self._process(batch)
            except Exception as exc:  # one bad batch must not stop inference for every camera
                log.exception("inference failed", extra={"fields": {"frames": len(batch.frames)}})
                for frame in batch.frames:
                    self._metrics.frames_dropped.labels(frame.meta.camera_id, "inference_error").inc()
                log_event(log, logging.ERROR, "batch dropped", error=repr(exc))
                continue
            self._emit(results)

    def _process(self, batch: Batch) -> list[FrameResult]:
        m = self._metrics
        start = time.monotonic()
        for frame in batch.frames:
            m.frame_age_seconds.observe(start - frame.ready_at)
        inputs, letterboxes = self._preprocess(batch)
        t_pre = time.monotonic()
        outputs = self._infer(inputs)
        t_inf = time.monotonic()
        results = []
        for i, frame in enumerate(batch.frames):
            cam = frame.meta.camera_id
            detections = self._postprocess(output=outputs[i], letterbox=letterboxes[i])
            results.append(FrameResult(frame.meta, self._seq[cam], detections))
            self._seq[cam] += 1
            m.frames_inferred.labels(cam).inc()
        end = time.monotonic()
        m.stage_seconds.labels("preprocess").observe(t_pre - start)
        m.stage_seconds.labels("infer").observe(t_inf - t_pre)
        m.stage_seconds.labels("postprocess").observe(end - t_inf)
        m.batch_size.observe(len(batch.frames))
        self.batches += 1
        return results
