"""The camera-list YAML: typed models, `${ENV}` interpolation, and errors that point at file:line.

`load_config(path)` returns a `Config` or raises `ConfigError` whose `problems` are ready-to-print
lines such as ``cameras.yaml:12: cameras[1].fps: Input should be greater than 0 (frames per
second to infer ...)``.
"""
from __future__ import annotations

import os
import re
from datetime import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core import PipelineError

CAMERA_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Transport = Literal["auto", "tcp", "udp"]
M = TypeVar("M", bound=BaseModel)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(PipelineError):
    """The configuration is invalid; `problems` holds one printable line per problem, by line."""

    def __init__(self, problems: list[str]) -> None:
        problems = sorted(problems, key=_line_of)
        super().__init__("\n".join(problems))
        self.problems = problems


def _line_of(problem: str) -> int:
    match = re.search(r":(\d+): ", problem)
    return int(match.group(1)) if match else 0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRuntimeOptions(_Strict):
    """Settings of the ONNX Runtime backend."""

    threads: int = Field(1, ge=1, le=256, description="intra-op threads of each inference run")
    parallel_runs: int | None = Field(
        None, ge=1, le=64, description="inference runs in parallel; default: CPU cores / threads"
    )
    spinning: bool = Field(
        False, description="let idle ORT threads spin (faster alone, steals CPU from decoding)"
    )


class TensorRTOptions(_Strict):
    """Settings of the TensorRT backend (engines are built per GPU model and TensorRT version)."""

    precision: Literal["fp16", "fp32"] = Field("fp16", description="engine precision")
    engine_cache: Path | None = Field(
        None, description="folder of built engines (default $XDG_CACHE_HOME/rtsp-pipeline/engines)"
    )
    build_if_missing: bool = Field(
        True, description="build the engine at start when the cache has none (takes minutes)"
    )
    workspace_mb: int = Field(2048, ge=64, le=65536, description="builder workspace limit (MiB)")


class ModelConfig(_Strict):
    """The detector and how to run it."""

    path: Path = Field(description="ONNX model file; relative paths start at the config file")
    backend: Literal["auto", "onnxruntime", "tensorrt", "stub"] = Field(
        "auto", description="auto picks TensorRT when a GPU is usable, else ONNX Runtime; "
        "stub skips inference (measures the pipeline's own ceiling; publishes no detections)"
    )
    confidence: float = Field(0.25, gt=0, le=1, description="minimum detection confidence")
    iou: float = Field(0.45, gt=0, le=1, description="IoU above which NMS merges boxes")
    input_size: int = Field(
        640, ge=64, le=2048, multiple_of=32, description="long side of the model input (dynamic models); "
        "default: the size the model was exported at (ultralytics' `imgsz` metadata), else 640"
    )
    max_detections: int = Field(300, ge=1, le=10000, description="most detections kept per frame")
    layout: Literal["auto", "yolov8", "yolov5", "end2end"] = Field(
        "auto", description="YOLO output layout; auto detects it from the model"
    )
    labels: Path | None = Field(
        None, description="text file with one class name per line (default: model metadata)"
    )
    nms: Literal["auto", "engine", "host"] = Field(
        "auto", description="where a raw-head YOLOv8 model's NMS runs: engine appends it to the model "
        "(the engine hands the host at most 300 boxes an image, not every anchor's scores; with ONNX Runtime "
        "it needs the onnx package), host runs it in Python's process; auto: engine with TensorRT, host "
        "with ONNX Runtime"
    )
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions)
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)
    memory_mb: float | None = Field(
        None, gt=0, le=1_000_000, description="most memory this model may take on its GPU (on the CPU path: of "
        "the process's), measured as it loads (engine, weights, its buffers); more refuses the start")


MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_MODEL = "default"  # how cameras name the top-level `model`
CANARY_MODEL = "canary"  # the lane name of `canary.model`, which replaces `model` on its cameras


class CascadeOn(_Strict):
    """What a classifier runs on: the detections of one detector."""

    model: str = Field(pattern=MODEL_NAME, description="the detector whose detections it classifies: `default` "
                       "(the top-level model) or a name of `models`")
    classes: list[str] | None = Field(None, min_length=1, description="the detector's classes (labels) it runs on; "
                                      "default: all")


class NamedModelConfig(ModelConfig):
    """One of several models a node runs (`models:`): a model's settings, and where its messages go."""

    kind: Literal["detect", "classify"] = Field(
        "detect", description="detect: a detector cameras name in their `models`; classify: a classifier run "
        "on crops of another model's detections (`on`), its label added to each as an attribute named after it")
    on: CascadeOn | None = Field(None, description="classify: whose detections it runs on")
    topic: str | None = Field(
        None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
        description="Kafka topic of this model's detections (default: kafka.topic)")

    @model_validator(mode="after")
    def _kind_needs(self) -> NamedModelConfig:
        if self.kind == "classify" and self.on is None:
            raise ValueError("a classifier needs `on: {model: ..., classes: [...]}`: the detector whose "
                             "detections it classifies")
        if self.kind == "classify" and self.topic is not None:
            raise ValueError("a classifier publishes nothing of its own (its labels ride on its detector's "
                             "messages): remove `topic`")
        if self.kind == "detect" and self.on is not None:
            raise ValueError("`on` is for classifiers (kind: classify)")
        return self


class BatchingConfig(_Strict):
    """How frames from all cameras are grouped for inference."""

    max_batch: int = Field(8, ge=1, le=64, description="most frames in one inference batch")
    max_wait_ms: float = Field(
        20, ge=0, le=1000, description="how long a batch waits for more frames after its first"
    )
    max_frame_age_ms: float = Field(
        1000, ge=10, le=60000, description="frames older than this are dropped, not inferred"
    )


class SourceConfig(_Strict):
    """Connection behaviour shared by all cameras."""

    open_timeout_s: float = Field(5, gt=0, le=120, description="limit for connecting to a camera")
    stall_timeout_s: float = Field(
        5, gt=0, le=300, description="no frame (or no data) for this long means reconnect"
    )
    backoff_initial_s: float = Field(1, gt=0, le=600, description="first reconnect delay")
    backoff_max_s: float = Field(30, gt=0, le=3600, description="longest reconnect delay")
    deblock: bool = Field(
        True, description="run H.264's in-loop deblocking filter when decoding on the CPU; turning it "
        "off saves about 29% of the decode time (1080p at 6 Mbit/s: 9.1 -> 6.5 ms per frame) but cost "
        "1.7 points of precision on 6 Mbit/s scenes (docs/BENCHMARKS.md)",
    )
    max_lag_s: float = Field(
        2.0, ge=0.2, le=60, description="a camera read more than this far behind real time (the CPU "
        "could not decode it as fast as it sends) skips to its next keyframes until it is back within "
        "half of it; the skipped frames are counted as dropped, reason lagging",
    )
    transport: Transport = Field(
        "auto", description="how cameras send RTP (each camera may override it): tcp (inside the RTSP "
        "connection), udp, or auto: TCP, and UDP for a camera that refuses TCP (461 Unsupported "
        "transport), kept for that camera until the daemon restarts",
    )
    udp_buffer_mb: float = Field(
        4, gt=0, le=256, description="receive buffer of each camera's UDP socket (FFmpeg's buffer_size): "
        "a 1080p keyframe is a burst of hundreds of packets; Linux caps it at net.core.rmem_max, so raise "
        "that sysctl to match (e.g. 8388608)",
    )
    udp_reorder_ms: float = Field(
        100, ge=0, le=2000, description="how long packets that arrive out of order over UDP are waited for "
        "(FFmpeg's max_delay); a packet later than this is lost (counted in rtp_packets_lost_total)",
    )
    max_clock_offset_s: float = Field(
        2.0, gt=0, le=31_536_000, description="a camera whose RTCP clock (capture time) is further than this "
        "from when its frames arrive is logged once, and its frames carry the receive time instead "
        "(camera_clock_offset_seconds shows the offset)",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class KafkaTls(_Strict):
    """TLS to the brokers (security_protocol SSL or SASL_SSL)."""

    cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates "
                                "(default: the system's)")
    certfile: Path | None = Field(None, description="client certificate, for brokers that require one")
    keyfile: Path | None = Field(None, description="the client certificate's private key")
    check_hostname: bool = Field(True, description="verify the broker's name against its certificate")

    @model_validator(mode="after")
    def _pair(self) -> KafkaTls:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: set both or neither")
        return self


class KafkaSasl(_Strict):
    """SASL authentication (security_protocol SASL_PLAINTEXT or SASL_SSL)."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(description="SASL mechanism")
    username: str = Field(min_length=1, description="SASL user")
    password: str = Field(min_length=1, description="SASL password; put it in ${ENV_VAR}")


def default_spool_folder() -> Path:
    """$STATE_DIRECTORY (systemd), else $XDG_STATE_HOME or ~/.local/state, + rtsp-pipeline/spool."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "spool"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rtsp-pipeline" / "spool"


class SpoolConfig(_Strict):
    """The on-disk spool every message passes through until Kafka acknowledges it."""

    folder: Path = Field(default_factory=default_spool_folder,
                         description="spool folder, one per daemon (default: $STATE_DIRECTORY/spool or "
                         "~/.local/state/rtsp-pipeline/spool)")
    max_mb: float = Field(1024, gt=0, le=1_000_000, description="disk space the spool may use (MiB)")
    policy: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest", description="what goes when the spool is full: the oldest or the newest messages"
    )
    memory_mb: float = Field(
        64, ge=0, le=100_000, description="memory for messages while the spool's disk refuses writes (full, "
        "read-only, removed), so they still reach the broker; 0: drop them"
    )


class KafkaConfig(_Strict):
    """Where detections and camera status go."""

    bootstrap_servers: str = Field(description="comma-separated host:port list")
    topic: str = Field("detections", pattern=r"^[A-Za-z0-9._-]{1,249}$", description="detections topic")
    status_topic: str = Field(
        "camera-status", pattern=r"^[A-Za-z0-9._-]{1,249}$", description="camera status topic"
    )
    client_id: str = Field("rtsp-pipeline", min_length=1, max_length=200, description="Kafka client id")
    compression: Literal["zstd", "gzip", "lz4", "snappy", "none"] = Field(
        "zstd", description="producer compression codec"
    )
    # 0: the producer sends one request per broker at a time, so messages that arrive while one is
    # in flight are batched anyway; lingering only delayed every message (10 ms: publish 13.3-14.4 -> 3.3-4.0 ms
    # mean, the same CPU and throughput, 4 x 360p in docs/BENCHMARKS.md)
    linger_ms: int = Field(0, ge=0, le=5000, description="how long the producer waits to fill a batch")
    max_in_flight: int = Field(
        1000, ge=1, le=100000, description="messages sent but not yet acknowledged, at most"
    )
    spool: SpoolConfig = Field(default_factory=lambda: SpoolConfig())
    request_timeout_s: float = Field(
        120, gt=0, le=3600, description="producer request timeout; also how long the producer retries a "
        "batch during an outage, in order (longer outages re-send from the spool)"
    )
    publish_empty: bool = Field(True, description="publish frames with no detections too")
    stop_timeout_s: float = Field(5, gt=0, le=120, description="limit for flushing Kafka on shutdown")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to talk to the brokers"
    )
    tls: KafkaTls | None = Field(None, description="TLS settings (SSL, SASL_SSL)")
    sasl: KafkaSasl | None = Field(None, description="SASL settings (SASL_PLAINTEXT, SASL_SSL)")

    @model_validator(mode="after")
    def _security(self) -> KafkaConfig:
        sasl_needed = self.security_protocol.startswith("SASL")
        if sasl_needed and self.sasl is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs a sasl: section "
                             "(mechanism, username, password)")
        if not sasl_needed and self.sasl is not None:
            raise ValueError(f"sasl: is set but security_protocol {self.security_protocol} does not use it; "
                             "use SASL_PLAINTEXT or SASL_SSL")
        if self.tls is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError(f"tls: is set but security_protocol {self.security_protocol} does not use TLS; "
                             "use SSL or SASL_SSL")
        return self

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{part.strip()!r} is not host:port")
        return value


class MetricsConfig(_Strict):
    """The HTTP endpoint for /metrics, /healthz, /readyz and the /preview page."""

    listen: str = Field("127.0.0.1:9108", description="host:port to serve metrics and health on")
    preview: bool = Field(
        True, description="serve /preview, a live page of camera pictures with their detections "
        "(pictures are only kept and encoded while someone watches; turn off where the port is reachable "
        "by people who must not see the cameras)",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9108)")
        return value

    @property
    def host(self) -> str:
        """Address to bind."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """Port to bind (0 picks a free one)."""
        return int(self.listen.rpartition(":")[2])


class DetectConfig(_Strict):
    """POST /v1/detect: images through the cameras' batcher and engine."""

    enabled: bool = Field(True, description="serve /v1/detect")
    max_body_mb: float = Field(10, gt=0, le=512, description="largest request body (MiB): larger is refused (413)")
    max_pixels: int = Field(
        40_000_000, ge=1, le=150_000_000, description="largest image (width x height) decoded; larger is "
        "refused from its header, before any decoding (413)")
    queue: int = Field(
        8, ge=1, le=1024, description="images waiting for inference, at most; more get 503 with Retry-After")
    timeout_s: float = Field(10, gt=0, le=300, description="a request not answered in this time gets 504")


class ApiTls(_Strict):
    """HTTPS for the HTTP endpoint."""

    certfile: Path = Field(description="PEM certificate (chain) the endpoint presents")
    keyfile: Path = Field(description="its private key (PEM)")


def default_clips_folder() -> Path:
    """Beside the default spool: $STATE_DIRECTORY/clips, else ~/.local/state/rtsp-pipeline/clips."""
    return default_spool_folder().with_name("clips")


class ClipsConfig(_Strict):
    """Evidence clips: a ring of each camera's encoded packets, cut into MP4 files on request."""

    enabled: bool = Field(False, description="keep each camera's last pre_s seconds of compressed video and "
                          "write clips when asked (POST /v1/cameras/{id}/clips, or an alert rule's request on requests_topic, "
                          "which may also ask for snapshots of its tracks); costs ring_mb of memory per camera "
                          "at most (about 5 MiB for 10 s of 4 Mbit/s)")
    folder: Path = Field(default_factory=default_clips_folder, description="where clips are written, a folder per "
                         "camera (default: beside the spool, e.g. $STATE_DIRECTORY/clips)")
    pre_s: float = Field(10, gt=0, le=120, description="seconds kept before a trigger (a clip starts at the keyframe "
                         "at or before it)")
    post_s: float = Field(10, ge=0, le=120, description="seconds after the trigger, when a request does not say")
    ring_mb: float = Field(16, gt=0, le=1024, description="memory for one camera's ring at most (MiB)")
    max_age_h: float = Field(168, gt=0, le=87600, description="clips older than this are deleted (hours)")
    max_gb: float = Field(10, gt=0, le=100_000, description="the clip folder's size at most; the oldest go first (GiB)")
    topic: str = Field("clips", pattern=r"^[A-Za-z0-9._-]{1,249}$", description="Kafka topic of clips/v1 and "
                       "snapshots/v1 messages")
    requests_topic: str | None = Field(
        "clip-requests", pattern=r"^[A-Za-z0-9._-]{1,249}$", description="Kafka topic the alerting consumer sends "
        "its rules' clip and snapshot requests to (clip-requests/v1, keyed by camera); every node reads it and "
        "serves the cameras it runs; null: none read")
    late_s: float = Field(5, ge=0, le=60, description="how late a rule's request may arrive (its alert's way "
                          "through Kafka and the alerting consumer) and still reach back pre_s: each ring holds "
                          "pre_s + late_s seconds")


class ApiConfig(_Strict):
    """Who may see pictures and run the model over HTTP (/preview*, /v1/*): bearer tokens.

    /metrics, /healthz and /readyz stay open. Without any token, the protected endpoints are open
    on a loopback address and switched off on any other (secure by default)."""

    tokens_env: str | None = Field(
        "RTSP_PIPELINE_API_TOKENS", description="environment variable with the tokens, comma-separated "
        "(read at start)")
    tokens_file: Path | None = Field(
        None, description="a file with one token per line, e.g. a mounted Kubernetes Secret (read at start)")
    tls: ApiTls | None = Field(None, description="serve HTTPS with this certificate and key")
    detect: DetectConfig = Field(default_factory=DetectConfig)


class GpuConfig(_Strict):
    """Which GPUs the daemon uses and how frames are decoded."""

    decoder: Literal["auto", "pyav", "nvdec"] = Field(
        "auto", description="nvdec decodes on the GPU (frames stay there); pyav on the CPU; "
        "auto: nvdec when the GPU path is chosen"
    )
    devices: list[Annotated[int, Field(ge=0, le=63)]] | None = Field(
        None, min_length=1, description="GPU indexes to use (default: all)"
    )
    memory_budget_mb: float | None = Field(
        None, gt=0, le=10_000_000, description="memory each GPU may give this node's models and frame pools, "
        "measured (see docs/operating.md); models over it refuse the start, a camera whose frame pool would "
        "pass it does not stream. On the CPU path: the models' share of the process's memory. Default: no limit"
    )


class TrackingConfig(_Strict):
    """Object tracking: every published detection carries a `track_id` that stays the same for
    the same object of a camera (pipeline.s5_track). Per camera, `cameras[].tracking` overrides
    the keys it sets."""

    enabled: bool = Field(True, description="track objects and add track ids and track start/end to messages")
    low_confidence: float = Field(
        0.1, gt=0, le=1, description="detections this confident but below model.confidence start no track; "
        "they keep existing tracks alive through occlusions (ByteTrack's second pass), and are published "
        "only as such a continuation (see publish_weak)")
    publish_weak: bool = Field(
        True, description="publish a weak detection (low_confidence up to model.confidence) that continues a "
        "confirmed track, under the track's id and with its own confidence, as ByteTrack outputs it; false: "
        "only detections of model.confidence or more are published")
    match_iou: float = Field(
        0.2, gt=0, lt=1, description="least IoU between a track's predicted box and a detection to match them")
    max_age_s: float = Field(
        2.0, gt=0, le=600, description="a track unseen this long is lost: no longer matched by where it is or was "
        "(at least 3 frame intervals at the camera's fps); it ends then if it has no look (see appearance)")
    lost_s: float = Field(
        8.0, gt=0, le=3600, description="a lost track stays searchable by its look this long after it was last "
        "seen, and ends then (found again, it comes back under its id, in `tracks.refound`); at most max_age_s: "
        "lost is ended")
    appearance: bool = Field(
        True, description="keep a look per track (a colour histogram of its box) and use it where motion cannot "
        "decide: two tracks wanting one box, and finding a lost track again")
    jump_s: float = Field(
        10, gt=0, le=3600, description="media time moving on by more than this, or backwards, ends every track")
    max_tracks: int = Field(256, ge=1, le=100_000, description="live tracks per camera at most")


class CameraConfig(_Strict):
    """One camera."""

    id: str = Field(pattern=CAMERA_ID, description="unique id: letters, digits, '.', '_', '-'")
    url: str = Field(description="rtsp:// or rtsps:// URL (put passwords in ${ENV_VARS}), or file:///path "
                     "(or file:path, relative to the config file's folder) of a recording: read as fast as "
                     "inference takes its frames, none dropped, then the camera is `finished`")
    start_time: datetime | None = Field(
        None, description="file:// only: when the recording's first frame was captured (RFC 3339 with a "
        "time zone), for captured_at when the file has no creation_time (clock: config)")
    fps: float | None = Field(
        None, gt=0, le=240, description="frames per second to infer (default: every frame)"
    )
    gpu: int | None = Field(
        None, ge=0, le=63, description="GPU index for this camera (default: spread evenly)"
    )
    tracking: TrackingConfig | None = Field(
        None, description="this camera's tracking settings: the keys given override `tracking`"
    )
    transport: Transport | None = Field(
        None, description="tcp, udp or auto for this camera (default: source.transport)"
    )
    cost: float | None = Field(
        None, gt=0, le=10000, description="placement: what the camera costs a node, in 1080p-frames/s "
        "(default: its fps, or 25 when every frame is inferred, as if 1080p: a 720p camera at 10 fps "
        "costs about 4.4)")
    models: list[Annotated[str, Field(pattern=MODEL_NAME)]] | None = Field(
        None, min_length=1, description="the models this camera's frames go to (each decoded frame is "
        "inferred by each): names of `models`, and `default` for the top-level `model`; default: [default]")

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file URL names host {parts.netloc!r}: only local files are read "
                                 "(file:///absolute/path, or file:path relative to the config file)")
            if not unquote(parts.path).strip("/"):
                raise ValueError("file URL has no path (file:///absolute/path, or file:path relative to the config file)")
            return value
        if parts.scheme not in ("rtsp", "rtsps"):
            raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not rtsp://, rtsps:// or file://")
        try:
            parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if not parts.hostname:
            raise ValueError("URL has no host")
        return value

    @field_validator("start_time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-06T14:03:12Z or +01:00): a recording's local time is ambiguous")
        return value

    @model_validator(mode="after")
    def _start_time_for_files(self) -> CameraConfig:
        if self.start_time is not None and not self.is_file:
            raise ValueError(f"camera {self.id}: start_time is for file:// cameras only (a live camera's "
                             "captured_at comes from RTCP or the receive time)")
        return self

    @property
    def is_file(self) -> bool:
        """A recording (file://), read at full speed, not a live camera."""
        return urlsplit(self.url).scheme == "file"

    @property
    def file_path(self) -> Path:
        """The local path of a file:// camera."""
        return Path(unquote(urlsplit(self.url).path))

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced by '***', safe to log."""
        return redact_url(self.url)


class CanaryConfig(_Strict):
    """A second model for some cameras, to compare with the main one before rolling it out."""

    model: ModelConfig = Field(description="the new model version and its settings (as `model`)")
    cameras: list[str] = Field(min_length=1, description="ids of the cameras the canary model serves instead")


class PlacementConfig(_Strict):
    """Several daemons sharing one camera list: which node runs which camera (docs/operating.md)."""

    mode: Literal["all", "kafka-group"] = Field(
        "all", description="all: this daemon runs every camera; kafka-group: the daemons of `group` share "
        "the cameras, placed by Kafka's group coordinator (failover, scale-out, capacity)")
    group: str = Field("rtsp-pipeline", pattern=r"^[A-Za-z0-9._-]{1,200}$",
                       description="the group's name (a Kafka consumer group; its control topic is GROUP.placement)")
    node_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,200}$", description="this node's stable id (default: the host name; in "
        "Kubernetes ${POD_NAME}); give each daemon on one host its own")
    capacity: float | None = Field(
        None, gt=0, le=100000, description="what this node can take, in 1080p-frames/s (a 1080p camera at 5 fps "
        "costs 5); default: 400 per GPU on the GPU path, 25 per CPU core otherwise; measure yours "
        "(docs/performance.md) and set it")
    session_timeout_s: float = Field(10, ge=1, le=1800, description="a node silent this long is dead: its cameras "
                                     "move (failover takes about this plus a rebalance); at least the brokers' "
                                     "group.min.session.timeout.ms (broker_min_session_timeout_s)")
    broker_min_session_timeout_s: float = Field(
        6, ge=0, le=1800, description="the brokers' group.min.session.timeout.ms, in seconds (Apache Kafka's "
        "default: 6): a member asking for less is refused at every JoinGroup; lower it only with the brokers' setting")
    heartbeat_s: float = Field(1, gt=0, le=100, description="how often a node tells the group it is alive (and "
                               "hears of a rebalance: a node that hears late can miss a short join window)")
    rebalance_timeout_s: float = Field(30, ge=1, le=600, description="how long a rebalance waits for members; one "
                                       "not finished after this plus session_timeout_s and 10 s is a stall, and "
                                       "the node joins again as a new member")

    @model_validator(mode="after")
    def _timeouts_the_group_accepts(self) -> PlacementConfig:
        if self.session_timeout_s < self.broker_min_session_timeout_s:
            raise ValueError(
                f"session_timeout_s {self.session_timeout_s:g} is below the brokers' group.min.session.timeout.ms "
                f"({self.broker_min_session_timeout_s:g} s; Apache Kafka's default is 6 s): the broker refuses such a "
                "member at every JoinGroup and it never joins; raise session_timeout_s, or lower the brokers' "
                "group.min.session.timeout.ms and set broker_min_session_timeout_s to it")
        if self.heartbeat_s * 3 > self.session_timeout_s:
            raise ValueError(f"heartbeat_s {self.heartbeat_s:g} must be at most a third of session_timeout_s "
                             f"{self.session_timeout_s:g}")
        return self


class Config(_Strict):
    """The whole daemon configuration."""

    model: ModelConfig | None = Field(
        None, description="the detector of the cameras that name no `models` (cameras name it `default`); "
        "required unless every camera names its models")
    models: dict[Annotated[str, Field(pattern=MODEL_NAME)], NamedModelConfig] = Field(
        default_factory=dict, description="more models, by name: a camera lists the ones its frames go to "
        "(`cameras[].models`); each decoded frame is inferred by each of its camera's models, each model "
        "batches across its cameras and publishes its own messages (`model.name`: its name here)")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    kafka: KafkaConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    canary: CanaryConfig | None = Field(
        None, description="serve some cameras with a new model version; compare per model in "
        "rtsp_pipeline_model_detections_total / model_frames_total"
    )
    cameras: Annotated[list[CameraConfig], Field(min_length=1, description="the cameras to read")]

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        dupes = sorted({c.id for c in cameras if c.id in seen or seen.add(c.id)})  # type: ignore[func-returns-value]
        if dupes:
            raise ValueError(f"duplicate camera ids: {', '.join(dupes)}; each id must be unique")
        return cameras

    @model_validator(mode="after")
    def _decoder_needs_gpu_backend(self) -> Config:
        if self.gpu.decoder == "nvdec" and self.backend == "onnxruntime":
            raise ValueError("gpu.decoder: nvdec keeps frames on the GPU, where ONNX Runtime (CPU) "
                             "cannot read them; use model.backend tensorrt, stub or auto, or gpu.decoder pyav")
        return self

    @model_validator(mode="after")
    def _models_known(self) -> Config:
        reserved = [name for name in self.models if name in (DEFAULT_MODEL, CANARY_MODEL)]
        if reserved:
            raise ValueError(f"models.{reserved[0]}: the name {reserved[0]!r} is taken (`default` names the "
                             "top-level model, `canary` the canary's); name the model otherwise")
        known = ([DEFAULT_MODEL] if self.model is not None else []) + [
            name for name, m in self.models.items() if m.kind == "detect"]
        for name, model in self.models.items():
            if model.on is not None and model.on.model not in known:
                raise ValueError(f"models.{name}.on.model: {model.on.model!r} is not a detector here; known: "
                                 f"{', '.join(known) or '(none)'}")
        classifiers = [name for name, m in self.models.items() if m.kind == "classify"]
        for index, camera in enumerate(self.cameras):
            named = [name for name in camera.models or () if name in classifiers]
            if named:
                raise ValueError(f"cameras[{index}].models: {named[0]!r} is a classifier: it runs on the detections of "
                                 f"its `on.model` wherever that runs; list detectors only")
            if camera.models is None and self.model is None:
                raise ValueError(f"cameras[{index}].models: camera {camera.id} names no models and there is no "
                                 f"top-level `model`; list the ones it needs ({', '.join(known)}) or add `model`")
            unknown = [name for name in camera.models or () if name not in known]
            if unknown:
                raise ValueError(f"cameras[{index}].models: camera {camera.id} names {', '.join(map(repr, unknown))}, "
                                 f"not a model here; known: {', '.join(known) or '(none)'}")
            if len(set(camera.models or ())) != len(camera.models or ()):
                raise ValueError(f"cameras[{index}].models: camera {camera.id} names a model twice; name each once")
        backends = {name: m.backend for name, m in {**self.detectors(), **self.models}.items()}
        if len(set(backends.values())) > 1:
            listed = ", ".join(f"{name}: {backend}" for name, backend in backends.items())
            raise ValueError(f"models: one node runs its models on one backend, these differ ({listed}); "
                             "give them all the same `backend` (auto picks TensorRT where a GPU is usable)")
        return self

    @model_validator(mode="after")
    def _one_seq_space_per_topic(self) -> Config:
        """Consumers check `frame.seq` per (run, camera, model.name) within a topic: two models that
        publish under one name to one topic would interleave their numbers."""
        by_key: dict[tuple[str, str], str] = {}
        for name in self.detectors():
            if name == CANARY_MODEL:  # serves only cameras the top-level model does not: no camera gets both
                continue
            key = (self.topic_of(name), self.message_name(name))
            if key in by_key:
                raise ValueError(
                    f"models.{name}: it and {by_key[key]!r} both publish to topic {key[0]!r} as model {key[1]!r}, "
                    "so consumers could not tell their frame.seq apart; give one of them its own `topic`, or "
                    "rename it")
            by_key[key] = name
        return self

    @model_validator(mode="after")
    def _canary_cameras_exist(self) -> Config:
        if self.canary is not None:
            known = {c.id: c for c in self.cameras}
            unknown = [cam for cam in self.canary.cameras if cam not in known]
            if unknown:
                raise ValueError(f"canary.cameras names cameras that are not in `cameras`: {', '.join(unknown)}; "
                                 "list ids of configured cameras")
            if self.model is None:
                raise ValueError("canary: a canary replaces the top-level `model` on its cameras, and there is "
                                 "none; add `model`, or run the new version as one of `models`")
            without = [cam for cam in self.canary.cameras if DEFAULT_MODEL not in (known[cam].models or [DEFAULT_MODEL])]
            if without:
                raise ValueError(f"canary.cameras: {', '.join(without)} do not use the top-level model (`default`), "
                                 "which the canary replaces; list cameras that do")
        return self

    def tracking_for(self, camera: CameraConfig) -> TrackingConfig:
        """A camera's tracking settings: `tracking`, with the keys its own `tracking` sets."""
        own = camera.tracking
        if own is None:
            return self.tracking
        return self.tracking.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})

    def lowest_confidence(self, model: ModelConfig) -> float:
        """The least score postprocessing keeps boxes at for `model`: tracking's weak boxes too,
        where any camera is tracked (an NMS in the engine keeps boxes from there up)."""
        low = [self.tracking_for(c).low_confidence for c in self.cameras if self.tracking_for(c).enabled]
        if self.tracking.enabled:
            low.append(self.tracking.low_confidence)
        return min([model.confidence, *low])

    @property
    def backend(self) -> str:
        """The backend every model runs on (validated to be one)."""
        return next(iter(self.detectors().values())).backend

    def detectors(self) -> dict[str, ModelConfig]:
        """Every detector this config may load, by lane name: `default` (the top-level model), each
        detector of `models`, and `canary` (the canary's)."""
        found: dict[str, ModelConfig] = {}
        if self.model is not None:
            found[DEFAULT_MODEL] = self.model
        found.update((name, m) for name, m in self.models.items() if m.kind == "detect")
        if self.canary is not None:
            found[CANARY_MODEL] = self.canary.model
        return found

    def classifiers_on(self, detector: str) -> dict[str, NamedModelConfig]:
        """The classifiers that run on one detector's detections, by name."""
        return {name: m for name, m in self.models.items() if m.kind == "classify" and m.on.model == detector}

    def models_of(self, camera: CameraConfig) -> list[str]:
        """The lane names of the models a camera's frames go to, in its order: its `models` (or
        `default`), with `canary` in place of `default` for the canary's cameras."""
        names = camera.models or [DEFAULT_MODEL]
        if self.canary is not None and camera.id in self.canary.cameras:
            names = [CANARY_MODEL if name == DEFAULT_MODEL else name for name in names]
        return names

    def topic_of(self, name: str) -> str:
        """The Kafka topic of one model's detections."""
        model = self.models.get(name)
        return (model.topic if model is not None else None) or self.kafka.topic

    def message_name(self, name: str) -> str:
        """How messages name a model (`model.name`): one of `models` by its name; the top-level
        model and the canary by their file's name without its suffix, as before `models` existed."""
        return name if name in self.models else self.detectors()[name].path.stem

    def secrets(self) -> set[str]:
        """Strings that must never appear in logs, metrics or messages."""
        found = set()
        for cam in self.cameras:
            parts = urlsplit(cam.url)
            if parts.password:
                found.add(parts.password)
        if self.kafka.sasl is not None:
            found.add(self.kafka.sasl.password)
        return {s for s in found if len(s) >= 3}


def redact_url(url: str) -> str:
    """Replace the password in a URL's user info with '***'."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# ---------------------------------------------------------------- loading with line numbers

def load_config(path: str | Path, environ: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a config file; raise ConfigError listing every problem."""

    def before(data: dict, path: Path, marks: dict) -> dict[tuple, list[str]]:
        duplicates = _duplicate_ids(data.get("cameras"), path, marks)
        _resolve_paths(data, path.parent)
        return {("cameras",): duplicates} if duplicates else {}

    return load_yaml_model(path, Config, environ, before=before, after=_check_files,
                           what="a mapping with model, kafka and cameras")


def load_yaml_model(path: str | Path, root: type[M], environ: dict[str, str] | None = None, *,
                    before: Callable[[dict, Path, dict], dict[tuple, list[str]]] | None = None,
                    after: Callable[[M, Path, dict], list[str]] | None = None, what: str = "a mapping") -> M:
    """Read a YAML file, interpolate ${VAR}s and validate it as `root`; raise ConfigError listing
    every problem as `file:line: key: what is wrong (what the key is for)`. `before` may adjust the
    data and report problems pydantic cannot see, by location (they replace pydantic's own errors
    at that location); `after` checks the validated model."""
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start} is not UTF-8; save the file as UTF-8 text)"]) from None
    if "\x00" in text:
        raise ConfigError([f"{path}: not a UTF-8 text file (a NUL byte at offset {text.index(chr(0))}: "
                           "a binary file?)"])
    try:
        data, marks = _parse_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: the file must be {what}"])

    problems = _interpolate(data, (), env, path, marks)
    found = before(data, path, marks) if before else {}
    problems += [problem for located in found.values() for problem in located]
    try:
        model = root.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if tuple(e["loc"]) not in found]
        problems += [_describe(err, path, marks, root) for err in errors]
        raise ConfigError(problems) from None
    problems += after(model, path, marks) if after else []
    if problems:
        raise ConfigError(problems)
    return model


def load_section(path: str | Path, name: str, model: type[M], environ: dict[str, str] | None = None) -> M:
    """One top-level section of a config file, its ${VAR}s filled and validated alone (its defaults
    when absent), for a tool that needs only it: the images' health check reads `metrics` and `api`,
    and must not call a daemon unhealthy for a camera's missing password. ConfigError otherwise."""
    path = Path(path)
    try:
        data, marks = _parse_yaml(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: cannot read it: {exc}"]) from None
    part = data.get(name) if isinstance(data, dict) else None
    part = part if isinstance(part, dict) else {}
    problems = _interpolate(part, (name,), os.environ if environ is None else environ, path, marks)
    try:
        section = model.model_validate(part)
    except ValidationError as exc:
        problems += [f"{path}: {name}: {err['msg']}" for err in exc.errors()]
    if problems:
        raise ConfigError(problems)
    return section


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true and false. YAML 1.1 (PyYAML's default) also reads on/off and
    yes/no as booleans, which turns a classifier's `on:` key, or a camera named `no`, into a bool;
    boolean settings still take yes/on as pydantic reads those strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _parse_yaml(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML and record the line of every key and list item by its path."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        marks: dict[tuple, int] = {}
        _record_marks(node, (), marks, path)
        return loader.construct_document(node), marks
    finally:
        loader.dispose()


def _record_marks(node: yaml.Node, at: tuple, marks: dict[tuple, int], path: Path) -> None:
    marks[at] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = key.value
            if name in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {name!r} appears twice", problem_mark=key.start_mark
                )
            seen.add(name)
            _record_marks(value, (*at, name), marks, path)
            marks[(*at, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_marks(item, (*at, index), marks, path)


def _interpolate(data: Any, at: tuple, env, path: Path, marks: dict) -> list[str]:
    """Replace ${VAR} and ${VAR:-default} in strings, in place; return problems. VAR comes from the
    environment, or from the file VAR_FILE names (a Docker or Kubernetes secret mounted as a file,
    so the secret is not in the process's environment), without its trailing newline."""
    problems: list[str] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in list(items):
        here = (*at, key)
        if isinstance(value, (dict, list)):
            problems += _interpolate(value, here, env, path, marks)
        elif isinstance(value, str) and "${" in value:
            missing: list[str] = []

            def sub(match: re.Match) -> str:
                name, default = match.group(1), match.group(2)
                if name in env:
                    return env[name]
                if f"{name}_FILE" in env:
                    try:
                        return Path(env[f"{name}_FILE"]).read_text().rstrip("\r\n")
                    except OSError as exc:
                        problems.append(f"{path}:{_line(marks, here)}: {_dotted(here)}: {name}_FILE names "
                                        f"{env[f'{name}_FILE']}, which cannot be read ({exc.strerror}); mount the "
                                        "secret there or fix the variable")
                        return ""
                if default is not None:
                    return default
                missing.append(name)
                return ""

            data[key] = _ENV_REF.sub(sub, value)
            for name in missing:
                problems.append(
                    f"{path}:{_line(marks, here)}: {_dotted(here)}: environment variable {name} is "
                    f"not set; export it, or {name}_FILE with the path of a file holding it (or give a "
                    f"default: ${{{name}:-value}})"
                )
    return problems


def _duplicate_ids(cameras: Any, path: Path, marks: dict) -> list[str]:
    if not isinstance(cameras, list):
        return []
    first: dict[str, int] = {}
    problems = []
    for index, cam in enumerate(cameras):
        cam_id = cam.get("id") if isinstance(cam, dict) else None
        if not isinstance(cam_id, str):
            continue
        line = _line(marks, ("cameras", index, "id"))
        if cam_id in first:
            problems.append(
                f"{path}:{line}: cameras[{index}].id: duplicate camera id {cam_id!r} (first at line "
                f"{first[cam_id]}); each camera needs its own id"
            )
        else:
            first[cam_id] = line
    return problems


def _resolve_paths(data: dict, base: Path) -> None:
    canary, named = data.get("canary"), data.get("models")
    for model in (data.get("model"), canary.get("model") if isinstance(canary, dict) else None,
                  *(named.values() if isinstance(named, dict) else ())):
        if not isinstance(model, dict):
            continue
        for key in ("path", "labels"):
            if isinstance(model.get(key), str):
                model[key] = str((base / os.path.expanduser(model[key])).resolve())
        trt = model.get("tensorrt")
        if isinstance(trt, dict) and isinstance(trt.get("engine_cache"), str):
            trt["engine_cache"] = str((base / os.path.expanduser(trt["engine_cache"])).resolve())
    cameras = data.get("cameras")
    for camera in cameras if isinstance(cameras, list) else ():
        url = camera.get("url") if isinstance(camera, dict) else None
        if isinstance(url, str) and url.startswith("file:") and not url.startswith("file://"):
            # file:relative/path (no //): from the config file's folder, like model paths
            camera["url"] = "file://" + quote(str((base / os.path.expanduser(unquote(url[5:]))).resolve()))
    clips = data.get("clips")
    if isinstance(clips, dict) and isinstance(clips.get("folder"), str):
        clips["folder"] = str((base / os.path.expanduser(clips["folder"])).resolve())
    kafka = data.get("kafka")
    for section, keys in (("tls", ("cafile", "certfile", "keyfile")), ("spool", ("folder",))):
        sub = kafka.get(section) if isinstance(kafka, dict) else None
        if isinstance(sub, dict):
            for key in keys:
                if isinstance(sub.get(key), str):
                    sub[key] = str((base / os.path.expanduser(sub[key])).resolve())


def _check_files(config: Config, path: Path, marks: dict) -> list[str]:
    files = [(("model", key), getattr(config.model, key)) for key in ("path", "labels") if config.model is not None]
    files += [(("models", name, key), getattr(model, key)) for name, model in config.models.items()
              for key in ("path", "labels")]
    if config.canary is not None:
        files += [(("canary", "model", key), getattr(config.canary.model, key)) for key in ("path", "labels")]
    if config.kafka.tls is not None:
        files += [(("kafka", "tls", key), getattr(config.kafka.tls, key)) for key in ("cafile", "certfile", "keyfile")]
    files += [(("cameras", i, "url"), str(camera.file_path)) for i, camera in enumerate(config.cameras) if camera.is_file]
    return [
        f"{path}:{_line(marks, loc)}: {_dotted(loc)}: file {file} does not exist; "
        "fix the path (relative paths start at the config file's folder)"
        for loc, file in files if file is not None and not Path(file).is_file()
    ]


def _describe(err: dict, path: Path, marks: dict, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    # pydantic adds the union member name ('float', 'function-after[...]') to some locations
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("float", "int", "str"))))
    line = _line(marks, loc)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], root)
        message = f"unknown key {loc[-1]!r}; allowed keys here: {', '.join(allowed)}"
    elif err["type"] == "missing":
        message = f"required key {loc[-1]!r} is missing; add it"
    if not loc and (named := _named_location(message)) is not None:  # a check across sections names its key
        return f"{path}:{_line(marks, named)}: {message}"
    hint = _field_description(loc, root)
    return f"{path}:{line}: {_dotted(loc) or '(top level)'}: {message}" + (f" ({hint})" if hint else "")


def _named_location(message: str) -> tuple | None:
    """The key a message starts with (`cameras[2].models: ...`) as a location, or None."""
    match = re.match(r"([A-Za-z_][\w-]*(?:\[\d+\]|\.[\w-]+)*): ", message)
    if match is None:
        return None
    return tuple(int(part) if part.isdigit() else part for part in re.findall(r"[\w-]+", match.group(1)))


def _line(marks: dict, loc: tuple) -> int:
    while loc and loc not in marks:
        loc = loc[:-1]
    return marks.get(loc, 1)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        candidates = [annotation, *(inner or ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _allowed_keys(loc: tuple, root: type[BaseModel]) -> list[str]:
    model = _model_at(loc, root)
    return sorted(model.model_fields) if model else []


def _field_description(loc: tuple, root: type[BaseModel]) -> str | None:
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    model = _model_at(loc[: max(i for i, p in enumerate(loc) if isinstance(p, str))], root)
    field = model.model_fields.get(names[-1]) if model else None
    return field.description if field else None
