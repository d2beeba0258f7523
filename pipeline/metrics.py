"""Prometheus metrics of one Runtime, in its own registry (no process-wide globals)."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.core import CameraState

PREFIX = "rtsp_pipeline_"
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class Metrics:
    """Every metric the pipeline exports; stages receive this object and update it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.nvml: NvmlCollector | None = None  # set by watch_gpus
        r, p = self.registry, PREFIX
        self.frames_decoded = Counter(p + "frames_decoded", "Frames decoded", ["camera"], registry=r)
        self.frames_inferred = Counter(p + "frames_inferred", "Frames inferred", ["camera"], registry=r)
        self.preview_jpegs = Counter(
            p + "preview_jpegs", "Annotated JPEGs made for the /preview page (0 while nobody watches)", registry=r)
        self.model_frames = Counter(
            p + "model_frames", "Frames inferred, by camera and model (name@sha256 prefix)", ["camera", "model"],
            registry=r)
        self.model_detections = Counter(
            p + "model_detections", "Detections found (before publishing), by camera and model: divided by "
            "model_frames, a canary's detection rate beside the main model's", ["camera", "model"], registry=r)
        self.frames_dropped = Counter(
            p + "frames_dropped",
            "Frames dropped before inference, by reason (superseded: a newer frame replaced it in "
            "the camera's slot; stale: older than batching.max_frame_age_ms; lagging: not decoded, the "
            "camera was read more than source.max_lag_s behind real time and skipped to its next "
            "keyframes; no_timestamp; decoder_buffers_busy; *_error; shutdown)",
            ["camera", "reason"],
            registry=r,
        )
        self.model_frames_dropped = Counter(
            p + "model_frames_dropped", "Frames a model's batcher dropped before inference, by camera, model "
            "(name@sha256 prefix) and reason (superseded, stale, ...): with several models, the one that cannot "
            "keep up (each model drops only its own frames)", ["camera", "model", "reason"], registry=r)
        self.messages_dropped = Counter(
            p + "messages_dropped",
            "Detection messages dropped after inference, by reason, each a frame.seq gap (spool_full: "
            "policy drop_newest; spool_error: the spool's disk refused it and its memory allowance was full; "
            "kafka_rejected: too large or invalid topic; shutdown: offered after stop)",
            ["camera", "reason"],
            registry=r,
        )
        self.detections_published = Counter(
            p + "detections_published", "Detections acknowledged by Kafka", ["camera"], registry=r
        )
        self.messages_published = Counter(
            p + "messages_published", "Messages acknowledged by Kafka", ["topic"], registry=r
        )
        self.camera_up = Gauge(p + "camera_up", "1 while the camera is streaming", ["camera"], registry=r)
        self.source_lag_seconds = Gauge(
            p + "source_lag_seconds",
            "How far behind real time the camera's stream is read (what source.max_lag_s bounds)",
            ["camera"], registry=r,
        )
        self.camera_state = Gauge(
            p + "camera_state", "1 for the camera's current state", ["camera", "state"], registry=r
        )
        self.reconnects = Counter(p + "reconnects", "Reconnect attempts", ["camera"], registry=r)
        self.camera_transport = Gauge(
            p + "camera_transport", "1 for the transport the camera's RTP comes over (tcp or udp; "
            "source.transport auto falls back to udp for a camera that refuses tcp)", ["camera", "transport"],
            registry=r)
        self.rtp_packets_lost = Counter(
            p + "rtp_packets_lost", "RTP packets lost over UDP, by reason (missed: never arrived; late: "
            "arrived after source.udp_reorder_ms); pictures they belonged to are decoded damaged",
            ["camera", "reason"], registry=r)
        self.camera_fps = Gauge(
            p + "camera_fps", "Frame rate per camera: delivered (pictures decoded per second, measured "
            "over about 10 s) and declared (what the stream says)", ["camera", "kind"], registry=r)
        self.camera_clock_offset = Gauge(
            p + "camera_clock_offset_seconds", "The camera's capture time (its RTCP clock) minus when the "
            "frame arrived: network and encoder delay (a little below 0), or a wrong camera clock "
            "(past source.max_clock_offset_s it is not used)", ["camera"], registry=r)
        self.source_errors = Counter(
            p + "source_errors", "Connection or stream failures by kind: refused, timeout, unauthorized, "
            "forbidden, not_found, invalid_data, transport (461 to every transport asked for), stalled, eof, "
            "no_video, decode_error, internal; on NVDEC also decoder_recreated, sequence_change, gpu_memory (its frame "
            "pool would pass gpu.memory_budget_mb)",
            ["camera", "kind"], registry=r
        )
        self.stage_seconds = Histogram(
            p + "stage_seconds",
            "Time per stage: decode per picture; preprocess, infer, postprocess, classify (classifiers on "
            "detections) per batch; track per frame; publish per message, from the spool to Kafka's acknowledgement", ["stage"], registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.tracks_active = Gauge(p + "tracks_active", "Objects being tracked", ["camera"], registry=r)
        self.tracks_started = Counter(p + "tracks_started", "Tracks started (new objects)", ["camera"], registry=r)
        self.tracks_ended = Counter(
            p + "tracks_ended", "Tracks ended, by reason (unseen: gone for tracking.lost_s, or max_age_s for a "
            "track with no look; reconnect; time_jump: the camera's media time ran backwards or jumped)",
            ["camera", "reason"], registry=r)
        self.clip_ring_bytes = Gauge(
            p + "clip_ring_bytes", "Compressed video a camera's clip ring holds (clips.enabled)", ["camera"], registry=r)
        self.clips = Counter(
            p + "clips", "Evidence clips by outcome: written, ended_early (written, shorter than asked: the "
            "camera's connection ended) or failed (disk full, read-only, writer busy)", ["camera", "outcome"],
            registry=r)
        self.snapshots = Counter(
            p + "snapshots", "Snapshots of alerted tracks by outcome: written, or failed (the track's best picture "
            "was no longer in the ring, the disk)", ["camera", "outcome"], registry=r)
        self.clip_requests = Counter(
            p + "clip_requests", "Alert rules' clip and snapshot requests read (clips.requests_topic), by outcome: "
            "accepted, refused (nothing to cut from, writer busy), not_here (another node runs the camera, or it "
            "is not streaming), stale (older than the ring), duplicate, invalid", ["outcome"], registry=r)
        self.tracks_refound = Counter(
            p + "tracks_refound", "Lost tracks (unseen longer than tracking.max_age_s) found again by their look, "
            "under their ids", ["camera"], registry=r)
        self.detections_untracked = Counter(
            p + "detections_untracked", "Detections published without a track id: tracking.max_tracks reached",
            ["camera"], registry=r)
        self.http_requests = Counter(
            p + "http_requests", "HTTP requests answered, by endpoint (its route; other: no route; malformed: requests "
            "the HTTP parser refused, e.g. a NUL byte in a header) and status", ["endpoint", "status"],
            registry=r)
        self.detect_seconds = Histogram(
            p + "detect_seconds", "POST /v1/detect: request received to detections ready (answered 200)",
            registry=r, buckets=_LATENCY_BUCKETS)
        self.detect_queue_depth = Gauge(
            p + "detect_queue_depth", "/v1/detect images waiting for inference (api.detect.queue bounds it)",
            registry=r)
        self.batch_size = Histogram(
            p + "batch_size", "Frames per inference batch", registry=r,
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
        )
        self.frame_age_seconds = Histogram(
            p + "frame_age_seconds", "Time from hand-over by the decoder to the start of inference",
            registry=r, buckets=_LATENCY_BUCKETS,
        )
        self.capture_to_ack_seconds = Histogram(
            p + "capture_to_ack_seconds", "Time from frame capture to Kafka acknowledgement",
            registry=r, buckets=_LATENCY_BUCKETS,
        )
        self.kafka_send_errors = Counter(
            p + "kafka_send_errors", "Messages Kafka did not acknowledge", ["reason"], registry=r
        )
        self.kafka_connect_errors = Counter(
            p + "kafka_connect_errors", "Failed attempts to connect to Kafka (unreachable, TLS, SASL)",
            ["reason"], registry=r,
        )
        self.publish_queue_depth = Gauge(
            p + "publish_queue_depth", "Messages in the spool not yet delivered to Kafka", registry=r
        )
        self.spool_bytes = Gauge(p + "spool_bytes", "Disk space the spool uses", registry=r)
        self.spool_writable = Gauge(
            p + "spool_writable", "1 while the spool writes to its disk; 0 while the disk refuses writes (full, "
            "read-only, removed): new messages are then held in memory, up to kafka.spool.memory_mb", registry=r,
        )
        self.spool_memory_bytes = Gauge(
            p + "spool_memory_bytes", "Messages held in memory because the spool's disk refused them", registry=r
        )
        self.spool_lost = Counter(
            p + "spool_lost", "Messages the spool had kept and then lost (removed: its files were deleted; "
            "unreadable: the disk failed to read them back; unsaved: held in memory at shutdown, the disk "
            "refusing them; torn: cut off at start with a record a crash or power loss left half written)", ["reason"], registry=r,
        )
        self.spool_dropped = Counter(
            p + "spool_dropped", "Messages dropped because the spool was full, by policy", ["policy"], registry=r
        )
        self.kafka_connected = Gauge(p + "kafka_connected", "1 while the producer is started", registry=r)
        self.kafka_topic_ready = Gauge(
            p + "kafka_topic_ready", "1 once the broker has the topic and lets us write to it; 0 while it "
            "does not (unknown topic, not authorised): its messages wait in the spool", ["topic"], registry=r,
        )
        self.gpu_copy_bytes = Counter(
            p + "gpu_copy_bytes", "Bytes our code copied between host and GPU (h2d, d2h) or within "
            "the GPU (d2d); on the NVDEC path only detections go d2h", ["gpu", "direction"], registry=r,
        )
        self.camera_gpu = Gauge(p + "camera_gpu", "The GPU a camera runs on", ["camera"], registry=r)
        self.placement_capacity = Gauge(
            p + "placement_capacity", "This node's capacity in the placement group, in 1080p-frames/s "
            "(placement.capacity)", registry=r)
        self.placement_cameras = Gauge(p + "placement_cameras", "Cameras the placement group gave this node",
                                       registry=r)
        self.placement_load = Gauge(
            p + "placement_load", "What this node's cameras cost, in 1080p-frames/s (load / capacity: how full it "
            "is; the autoscaler's signal)", registry=r)
        self.placement_unplaced = Gauge(
            p + "placement_unplaced", "Cameras no node of the group has room for, as of the last plan", registry=r)
        self.placement_rebalances = Counter(p + "placement_rebalances", "Assignments this node applied", registry=r)
        self.placement_overlaps = Counter(
            p + "placement_overlaps", "Cameras this node gave up because the group had moved them while it was "
            "cut off from Kafka (both ran them meanwhile)", ["camera"], registry=r)
        self.placement_joined = Gauge(
            p + "placement_joined", "1 while this node is a member of its placement group with an assignment, 0 "
            "while it joins or the group rebalances", registry=r)
        self.placement_moving_seconds = Gauge(
            p + "placement_moving_seconds", "How long a camera has been on its way between nodes (taken from one, "
            "not yet given to the next), as this node last heard from the group", ["camera"], registry=r)
        self.placement_refused = Gauge(
            p + "placement_refused", "Cameras the group gave this node that it cannot run (not in its camera list, "
            "or no lane for their GPU or model)", registry=r)
        self.placement_lists_differ = Gauge(
            p + "placement_lists_differ", "Nodes of the group whose camera list differs from the leader's (a reload "
            "that reached only some nodes)", registry=r)
        self.placement_frozen = Gauge(
            p + "placement_frozen", "Members of the group whose report the leader cannot read (a wire format it does "
            "not know): nothing is placed or moved while this is above 0", registry=r)
        self.placement_stalls = Counter(
            p + "placement_stalls", "Rebalances that did not finish within rebalance_timeout_s + session_timeout_s + "
            "a margin; the node then left and joined again as a new member", registry=r)
        self.placement_round_two_asks = Counter(
            p + "placement_round_two_asks", "Times this node asked for the second round of a move (it stopped "
            "cameras that go to another node), first and again until they were given", registry=r)
        self.placement_errors = Counter(
            p + "placement_errors", "Failures inside the group protocol's callbacks, survived (where: plan, "
            "assignment, apply, rejoin)", ["where"], registry=r)
        self.native_output_lines = Counter(
            p + "native_output_lines", "Lines a native library printed on stdout, kept out of the log "
            "(PyNvVideoCodec: concealed_picture for each picture NVDEC concealed in a damaged stream, "
            "fatal, timer, other)", ["library", "kind"], registry=r,
        )
        self.config_reloads = Counter(
            p + "config_reloads", "Config reloads (SIGHUP) by result: applied, rejected", ["result"], registry=r,
        )
        self.gpu_memory = Gauge(
            p + "gpu_memory_bytes", "Memory per GPU (gpu=\"cpu\": the CPU path's) by use: model:NAME (measured "
            "as it loaded), frames (the cameras' frame pools at full depth), context and decoder (this process's "
            "CUDA context, and the rest NVML sees it hold: NVDEC's decoders)", ["gpu", "use"], registry=r)
        self.gpu_memory_budget = Gauge(
            p + "gpu_memory_budget_bytes", "gpu.memory_budget_mb per GPU: models + frame pools stay under it",
            ["gpu"], registry=r)
        self.model_info = Gauge(
            p + "model_info", "The loaded model", ["name", "sha256", "backend"], registry=r
        )

    def watch_gpus(self, nvml: Any | None = None) -> bool:
        """Export GPU utilisation and memory from NVML (nvidia-ml-py) at each scrape, when NVML is
        installed and finds a GPU; False (nothing exported) otherwise."""
        collector = NvmlCollector.create(nvml)
        if collector is None:
            return False
        self.registry.register(collector)
        self.nvml = collector
        return True

    def process_gpu_bytes(self, index: int) -> int | None:
        """What NVML says this process holds on GPU `index`; None without NVML (watch_gpus first)."""
        return None if self.nvml is None else self.nvml.process_bytes(index)

    def set_camera_state(self, camera: str, state: CameraState) -> None:
        """Export a camera's state as a one-hot gauge and camera_up."""
        for s in CameraState:
            self.camera_state.labels(camera, s.value).set(1 if s is state else 0)
        self.camera_up.labels(camera).set(1 if state is CameraState.STREAMING else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class NvmlCollector(Collector):
    """GPU utilisation and memory per GPU, read from NVML when Prometheus scrapes."""

    def __init__(self, nvml: Any, count: int) -> None:
        self._nvml = nvml
        self._count = count

    @classmethod
    def create(cls, nvml: Any | None = None) -> NvmlCollector | None:
        """A collector over `nvml` (default: the `pynvml` module of nvidia-ml-py), or None when NVML
        is missing or sees no GPU."""
        try:
            if nvml is None:
                import pynvml as nvml  # optional: the gpu extra
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # not installed, no driver, no GPU: GPU panels stay empty
            logging.getLogger(__name__).debug("no NVML: %s", exc)
            return None
        return cls(nvml, count) if count else None

    def process_bytes(self, index: int) -> int | None:
        """This process's memory on GPU `index`, or None where NVML does not list it (a container
        with its own PID namespace: NVML lists the host's PIDs) or does not know it."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # noqa: BLE001 - any NVML failure: unknown
            return None
        used = next((p.usedGpuMemory for p in processes if p.pid == os.getpid()), None)
        return int(used) if isinstance(used, int) else None  # None: NVML_VALUE_NOT_AVAILABLE on some setups

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily(PREFIX + "gpu_utilization_ratio", "GPU busy fraction over NVML's last sample period",
                                 labels=["gpu"])
        used = GaugeMetricFamily(PREFIX + "gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=["gpu"])
        total = GaugeMetricFamily(PREFIX + "gpu_memory_total_bytes", "GPU memory in all", labels=["gpu"])
        for index in range(self._count):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a GPU fell off the bus: its series stop, the scrape goes on
                continue
            util.add_metric([str(index)], rates.gpu / 100)
            used.add_metric([str(index)], memory.used)
            total.add_metric([str(index)], memory.total)
        yield from (util, used, total)

    def describe(self) -> list:
        return []
