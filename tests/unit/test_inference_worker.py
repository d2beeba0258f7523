"""The inference pipeline: parallel engine runs still deliver results in batch order with
gap-free per-camera seq, and a failing batch is counted without stopping the others."""
import random
import threading
import time

import numpy as np

from pipeline.core import Batch, Frame, FrameMeta, Letterbox
from pipeline.inference_worker import InferenceWorker
from pipeline.metrics import Metrics
from scripts.lab.common import wait_for
from scripts.lab.daemons import metric_values

LB = Letterbox(1.0, 0, 0, 64, 48)


def batches(count):
    """Batches of one frame each, alternating two cameras; pts tells the order they were made."""
    made = [Batch((Frame(FrameMeta("ab"[i % 2], float(i), 0.0, "receive", 64, 48), i, 0.0),))
            for i in range(count)]
    lock = threading.Lock()

    def next_batch(_timeout):
        with lock:
            if made:
                return made.pop(0)
        time.sleep(0.01)
        return None

    return next_batch


def preprocess(batch):
    return np.array([[f.image] for f in batch.frames], np.float32), [LB] * len(batch.frames)


def run(infer, count=40, concurrency=3):
    emitted, metrics = [], Metrics()
    worker = InferenceWorker(
        batches(count), [preprocess] * (concurrency + 1), infer, concurrency,
        lambda output, letterbox: (), emitted.extend, metrics,
    )
    worker.start()
    try:
        wait_for(lambda: len(emitted) + _dropped(metrics) >= count, 20, "every batch to finish")
    finally:
        assert worker.stop(5)
    return emitted, metrics


def _dropped(metrics):
    return sum(metric_values(metrics.render().decode(), "rtsp_pipeline_frames_dropped_total").values())


def test_parallel_runs_finish_in_batch_order_with_gap_free_seq():
    rng = random.Random(7)

    def slow_and_uneven(x):  # later batches often finish first
        time.sleep(rng.uniform(0, 0.02))
        return x

    emitted, _ = run(slow_and_uneven)
    assert [r.meta.pts for r in emitted] == [float(i) for i in range(40)]
    for cam in "ab":
        assert [r.seq for r in emitted if r.meta.camera_id == cam] == list(range(20))


def test_a_failing_batch_is_dropped_and_counted_and_the_rest_go_on():
    def fails_on_batch_7(x):
        if x[0, 0] == 7:
            raise RuntimeError("engine fault")
        return x

    emitted, metrics = run(fails_on_batch_7)
    assert [r.meta.pts for r in emitted] == [float(i) for i in range(40) if i != 7]
    dropped = metric_values(metrics.render().decode(), "rtsp_pipeline_frames_dropped_total")
    assert dropped == {'{camera="b",reason="inference_error"}': 1.0}
