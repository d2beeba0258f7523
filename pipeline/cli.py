"""Command line: `rtsp-pipeline run --config FILE`, `rtsp-pipeline validate-config FILE`,
`rtsp-pipeline analyze FILE... [--config FILE]` (recordings at full speed, then a summary: pipeline.analyze),
`rtsp-pipeline build-engine --config FILE [--force]` (TensorRT plans into the engine cache),
`rtsp-pipeline alerts --rules FILE` (the alerting consumer) and `rtsp-pipeline healthcheck
[--config FILE]` (asks the running daemon's /healthz where its config says it listens: the
container images' HEALTHCHECK; the file defaults to $RTSP_PIPELINE_CONFIG, else the images' path).

Exit codes: 0 success or clean stop, 2 invalid configuration (one line per problem on stderr),
1 failure at run time (model cannot load, address in use, ...).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, load_config
from pipeline.core import PipelineError
from pipeline.logs import log_event, setup_logging

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "/etc/rtsp-pipeline/cameras.yaml"  # where the container images and the systemd unit keep it
log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None, stop_requested: threading.Event | None = None,
         handlers: dict | None = None) -> int:
    """The commands (pipeline.launch calls this: `stop_requested` is set by a SIGTERM or SIGINT that
    came before, and `handlers` are the ones it replaced)."""
    # ONNX Runtime 1.32 starts Microsoft's telemetry when imported: it writes a device id and an
    # event store under $XDG_CACHE_HOME/Microsoft (a read-only container root gets a warning line on
    # stderr instead). An edge box sending usage data is not what operators expect: off unless set.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(prog="rtsp-pipeline", description="RTSP cameras -> YOLO -> Kafka")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, help="camera list YAML")
    run.add_argument("--shard", help=argparse.SUPPRESS)  # retired: refused with what to use instead
    analyze = commands.add_parser("analyze", help="analyse recordings (files) with the config's models, tracking "
                                  "and publishing, as fast as inference goes; exit 0 when every file is done")
    analyze.add_argument("files", nargs="+", metavar="FILE", help="video files (any container FFmpeg reads)")
    analyze.add_argument("--config", default=os.environ.get("RTSP_PIPELINE_CONFIG", DEFAULT_CONFIG),
                         help=f"the daemon's config: models, tracking, kafka (its cameras are not used; default: "
                         f"$RTSP_PIPELINE_CONFIG, else {DEFAULT_CONFIG})")
    analyze.add_argument("--fps", type=float, help="frames per second of each file to infer (default: every frame)")
    analyze.add_argument("--models", help="comma-separated model names (as a camera's `models`; default: default)")
    analyze.add_argument("--spool", type=Path, help="spool folder (default: the config's, with -analyze appended)")
    analyze.add_argument("--deliver-timeout", type=float, default=60.0,
                         help="seconds to wait for Kafka to acknowledge every message once the files are done")
    analyze.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    check = commands.add_parser("validate-config", help="check a config file and exit (0 valid, 2 not)")
    check.add_argument("file")
    build = commands.add_parser("build-engine", help="build the TensorRT engine of each GPU into the cache")
    build.add_argument("--config", required=True, help="camera list YAML (its model, batching, gpu)")
    build.add_argument("--force", action="store_true", help="rebuild even when the cache has the engine")
    alerts = commands.add_parser("alerts", help="run the alerting consumer (rules YAML -> alerts topic)")
    alerts.add_argument("--rules", required=True, help="alert rules YAML (see configs/alerts.example.yaml)")
    alerts.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    where = commands.add_parser("placement", help="print the placement group's current map: node -> cameras, "
                                "capacity used, unplaced cameras")
    where.add_argument("--config", required=True, help="a node's config (its kafka and placement sections)")
    where.add_argument("--timeout", type=float, default=15.0)
    health = commands.add_parser("healthcheck", help="exit 0 when the running daemon's /healthz answers 200")
    health.add_argument("--config", default=os.environ.get("RTSP_PIPELINE_CONFIG", DEFAULT_CONFIG),
                        help=f"the daemon's config (default: $RTSP_PIPELINE_CONFIG, else {DEFAULT_CONFIG})")
    health.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.command not in ("run", "analyze"):
        _default_signals(stop_requested, handlers)
    if args.command == "healthcheck":
        return _healthcheck(args.config, args.timeout)
    if getattr(args, "shard", None):
        print("--shard was retired: every node runs the same config with placement.mode: kafka-group, and the "
              "group places the cameras (failover, scale-out); see docs/operating.md#several-nodes", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "alerts":
        return _run_alerts(args.rules, args.log_level)

    if args.command == "analyze":
        return _analyze(args, stop_requested)
    path = args.file if args.command == "validate-config" else args.config
    config = _load_or_report(path)
    if config is None:
        return EXIT_CONFIG
    if args.command == "validate-config":
        print(f"{path}: OK ({len(config.cameras)} cameras)")
        return EXIT_OK
    if args.command == "build-engine":
        return _build_engines(config, args.force)
    if args.command == "placement":
        return _print_placement(config, args.timeout)
    return _run(config, path, stop_requested)


def _analyze(args: argparse.Namespace, stop_requested: threading.Event | None) -> int:
    """`rtsp-pipeline analyze`: the files through the config's models, then a summary."""
    from pydantic import ValidationError

    from pipeline.analyze import EXIT_CONFIG as BAD_INPUT, analysis_config, recordings, run_analysis

    config = _load_or_report(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.fps is not None and not 0 < args.fps <= 240:
        print(f"--fps {args.fps:g}: give frames per second in (0, 240]", file=sys.stderr)
        return EXIT_CONFIG
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    known = set(config.detectors()) - {"canary"}
    unknown = [m for m in models or () if m not in known]
    if unknown:
        print(f"--models: {', '.join(unknown)} not a detector of {args.config} (its detectors: "
              f"{', '.join(sorted(known))})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        files, problems = recordings(args.files, args.fps, models)
    except ValidationError as exc:
        print(f"cannot analyse: {exc.errors()[0]['msg']}", file=sys.stderr)
        return BAD_INPUT
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return BAD_INPUT
    config = analysis_config(config, [f.camera for f in files], args.spool)
    setup_logging(args.log_level, config.secrets())
    requested = stop_requested or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = run_analysis(config, files, args.deliver_timeout, requested)
    except (PipelineError, OSError) as exc:
        log_event(log, logging.ERROR, "cannot analyse", error=str(exc))
        return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _leave_blocked_threads(code)
    return code


def _default_signals(stop_requested: threading.Event | None, handlers: dict | None) -> None:
    """A command other than run: the handlers it had before launch's, and a signal that came
    meanwhile acted on now."""
    for sig, handler in (handlers or {}).items():
        signal.signal(sig, handler)
    if stop_requested is not None and stop_requested.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def _print_placement(config: Config, timeout: float) -> int:
    """The last map the group's leader published on the control topic, as a table."""
    from pipeline.placement.group import read_placement_map

    group = config.placement.group
    found, why = asyncio.run(read_placement_map(config.kafka, group, timeout))
    if found is None:
        print(f"group {group}: no placement read from {group}.placement within {timeout:g} s: {why}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"group {group}, generation {found['generation']}:")
    print(f"{'node':<24} {'cameras':>7} {'load':>8} {'capacity':>9} {'used':>6}  ids")
    for node, info in sorted(found["nodes"].items()):
        used = info["load"] / info["capacity"] if info["capacity"] else 0
        print(f"{node:<24} {len(info['cameras']):>7} {info['load']:>8.1f} {info['capacity']:>9.1f} {used:>6.0%}  "
              f"{' '.join(info['cameras'])}")
    if found["moving"]:
        print(f"moving between nodes: {' '.join(found['moving'])}")
    print(f"unplaced: {' '.join(found['unplaced']) if found['unplaced'] else 'none'}")
    return EXIT_OK


def _healthcheck(path: str, timeout: float) -> int:
    """GET /healthz where the config's metrics.listen says (a wildcard address: on loopback)."""
    import ssl
    import urllib.request

    from pipeline.config import ApiConfig, MetricsConfig, load_section

    try:  # only what says where it listens: the rest of the file is the daemon's business
        metrics, api = load_section(path, "metrics", MetricsConfig), load_section(path, "api", ApiConfig)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    host = metrics.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    scheme = "https" if api.tls is not None else "http"
    url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{metrics.port}/healthz"
    context = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323 - our own daemon
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as answer:
            ok = answer.status == 200
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{url}: {'healthy' if ok else 'unhealthy'}")
    return EXIT_OK if ok else EXIT_FAILURE


def _load_or_report(path: str, load: Callable[[str], Any] = load_config) -> Any:
    """The loaded file, or None after printing its problems (one `file:line: ...` each)."""
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _run(config: Config, path: str, stop_requested: threading.Event | None = None) -> int:
    # A SIGTERM or SIGINT before the Runtime has its own handlers (its imports and construction
    # take a second or two) is an orderly stop: noted (by pipeline.launch from the process's first
    # moments, else from here), and the Runtime stops at once when it starts.
    requested = stop_requested or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: requested.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_runtime(config, path, requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_runtime(config: Config, path: str, stop_requested: threading.Event) -> int:
    from pipeline.api.server import load_tokens
    from pipeline.app import Runtime  # imported here so validate-config stays light
    from pipeline.systemd import SystemdNotifier

    try:
        tokens = load_tokens(config.api)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level, config.secrets() | set(tokens))
    notifier = SystemdNotifier.from_environment()
    try:
        code = asyncio.run(Runtime(config, config_path=Path(path), notifier=notifier,
                                   api_tokens=tokens).run(stop_requested.is_set))
    except (PipelineError, OSError) as exc:
        log_event(log, logging.ERROR, "cannot run", error=str(exc))
        return EXIT_FAILURE
    _leave_blocked_threads(code)
    return code


def _leave_blocked_threads(code: int) -> None:
    """Exit at once if threads are still alive (camera threads blocked inside FFmpeg are abandoned
    at shutdown): finalising the interpreter under them can crash it (SIGSEGV seen in tests)."""
    if any(t.is_alive() for t in threading.enumerate() if t is not threading.main_thread()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_alerts(path: str, log_level: str) -> int:
    from aiokafka.errors import KafkaError

    from pipeline.alerting.consumer import run_until_signal
    from pipeline.alerting.rules import load_rules

    rules = _load_or_report(path, load_rules)
    if rules is None:
        return EXIT_CONFIG
    setup_logging(log_level, set())
    try:
        return asyncio.run(run_until_signal(rules))
    except (PipelineError, OSError, KafkaError) as exc:
        log_event(log, logging.ERROR, "alerting stopped", error=str(exc))
        return EXIT_FAILURE


def _build_engines(config: Config, force: bool) -> int:
    """Build (or find) the plan for every GPU the config uses; print where each is."""
    from pipeline.gpu import Gpu, choose_path, probe
    from pipeline.s4_infer import engine_cache

    setup_logging(config.log_level, config.secrets())
    try:
        found = probe()
        choose_path("tensorrt", "pyav", found)  # says what is missing on this machine
        for index in config.gpu.devices or range(found.devices):
            for name, model in config.detectors().items():
                plan = engine_cache.plan_for(model, Gpu(index), config.batching.max_batch, force=force,
                                             confidence=config.lowest_confidence(model))
                print(f"GPU {index}, model {name}: {plan}")
    except (PipelineError, OSError, RuntimeError) as exc:
        log_event(log, logging.ERROR, "cannot build the engine", error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
