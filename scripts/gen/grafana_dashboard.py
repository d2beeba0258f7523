"""Writes the Grafana dashboard of the daemon's metrics (deploy/grafana/dashboards/rtsp-pipeline.json).

    .venv/bin/python -m scripts.gen.grafana_dashboard [--check]

The JSON is generated so that panels stay consistent and reviewable; `--check` fails when the
committed file differs from what this script writes (the tests run it, and check that every
metric a panel queries is one the daemon exports).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "rtsp-pipeline.json"
P = "rtsp_pipeline_"
CAM = 'camera=~"$camera"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def quantile(q: float, metric: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({q}, sum by ({group}) (rate({P}{metric}_bucket[$__rate_interval])))"


# (title, unit, [(expr, legend)], kind, width)
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str, int]]]] = [
    ("Cameras", [
        ("Cameras streaming", "none", [(f"sum({P}camera_up{{{CAM}}})", "streaming"),
                                       (f"count({P}camera_up{{{CAM}}})", "configured")], "stat", 6),
        ("Frames inferred per camera", "fps", [(f"sum by (camera) (rate({P}frames_inferred_total{{{CAM}}}[$__rate_interval]))", "{{camera}}")], "timeseries", 9),
        ("Camera state", "none", [(f"max by (camera, state) ({P}camera_state{{{CAM}}}) == 1", "{{camera}}: {{state}}")], "state", 9),
        ("Frames dropped per camera, by reason", "fps", [(f"sum by (camera, reason) (rate({P}frames_dropped_total{{{CAM}}}[$__rate_interval]))", "{{camera}} {{reason}}")], "timeseries", 8),
        ("Reconnects and source errors", "short", [
            (f"sum by (camera) (increase({P}reconnects_total{{{CAM}}}[$__rate_interval]))", "{{camera}} reconnects"),
            (f"sum by (camera, kind) (increase({P}source_errors_total{{{CAM}}}[$__rate_interval]))", "{{camera}} {{kind}}")], "timeseries", 8),
        ("Detections per frame, by model (compare a canary)", "short", [
            (f"sum by (model) (rate({P}model_detections_total{{{CAM}}}[$__rate_interval])) / "
             f"sum by (model) (rate({P}model_frames_total{{{CAM}}}[$__rate_interval]))", "{{model}}")], "timeseries", 8),
    ]),
    ("Camera streams: transport, loss, frame rate, clock", [
        ("RTP packets lost per second (UDP), by reason", "short", [
            (f"sum by (camera, reason) (rate({P}rtp_packets_lost_total{{{CAM}}}[$__rate_interval]))",
             "{{camera}} {{reason}}"),
            (f"max by (camera, transport) ({P}camera_transport{{{CAM}}}) == 1", "{{camera}} over {{transport}}")],
         "timeseries", 8),
        ("Frame rate: delivered and declared", "fps", [
            (f"max by (camera, kind) ({P}camera_fps{{{CAM}}})", "{{camera}} {{kind}}")], "timeseries", 8),
        ("Camera clock (RTCP) minus arrival", "s", [
            (f"max by (camera) ({P}camera_clock_offset_seconds{{{CAM}}})", "{{camera}}")], "timeseries", 8),
    ]),
    ("Latency and batching", [
        ("Capture -> Kafka acknowledged", "s", [(quantile(0.5, "capture_to_ack_seconds"), "p50"),
                                                (quantile(0.99, "capture_to_ack_seconds"), "p99")], "timeseries", 6),
        ("Camera read behind real time (source.max_lag_s bounds it)", "s",
         [(f"max by (camera) ({P}source_lag_seconds{{{CAM}}})", "{{camera}}")], "timeseries", 6),
        ("Stage time (p99): decode per picture, publish per message, others per batch", "s",
         [(quantile(0.99, "stage_seconds", "stage"), "{{stage}}")], "timeseries", 6),
        ("Frame age at inference (p99) and batch size", "s", [
            (quantile(0.99, "frame_age_seconds"), "frame age p99"),
            (f"sum(rate({P}batch_size_sum[$__rate_interval])) / sum(rate({P}batch_size_count[$__rate_interval]))", "mean batch size (right axis)")],
         "timeseries", 6),
    ]),
    ("Kafka and spool", [
        ("Kafka connected / topics ready / spool disk writable", "none", [
            (f"{P}kafka_connected", "connected"), (f"{P}kafka_topic_ready", "{{topic}} ready"),
            (f"{P}spool_writable", "spool disk writable")], "timeseries", 6),
        ("Kafka errors", "short", [
            (f"sum by (reason) (increase({P}kafka_send_errors_total[$__rate_interval]))", "send {{reason}}"),
            (f"sum by (reason) (increase({P}kafka_connect_errors_total[$__rate_interval]))", "connect {{reason}}")], "timeseries", 6),
        ("Spool: waiting messages and disk", "short", [(f"{P}publish_queue_depth", "messages waiting"),
                                                        (f"{P}spool_bytes", "bytes (right axis)")], "timeseries", 6),
        ("Messages lost (spool full, disk refusing) and published", "short", [
            (f"sum by (policy) (increase({P}spool_dropped_total[$__rate_interval]))", "dropped ({{policy}})"),
            (f"sum by (reason) (increase({P}messages_dropped_total{{reason=~\"spool_.*\"}}[$__rate_interval]))",
             "refused ({{reason}})"),
            (f"sum by (reason) (increase({P}spool_lost_total[$__rate_interval]))", "lost ({{reason}})"),
            (f"sum by (topic) (rate({P}messages_published_total[$__rate_interval]))", "{{topic}} /s")], "timeseries", 6),
    ]),
    ("Tracking", [
        ("Objects tracked per camera", "short", [(f"sum by (camera) ({P}tracks_active{{{CAM}}})", "{{camera}}")],
         "timeseries", 8),
        ("Tracks started and ended per second", "short", [
            (f"sum by (camera) (rate({P}tracks_started_total{{{CAM}}}[$__rate_interval]))", "{{camera}} started"),
            (f"sum by (camera, reason) (rate({P}tracks_ended_total{{{CAM}}}[$__rate_interval]))", "{{camera}} ended: {{reason}}")],
         "timeseries", 8),
        ("Tracker time per frame (p99)", "s", [
            (f"histogram_quantile(0.99, sum by (le) (rate({P}stage_seconds_bucket{{stage=\"track\"}}[$__rate_interval])))",
             "track p99"),
            (f"sum by (camera) (rate({P}detections_untracked_total{{{CAM}}}[$__rate_interval]))",
             "{{camera}} untracked /s (max_tracks reached)")], "timeseries", 8),
    ]),
    ("Placement (several nodes; empty with placement.mode all)", [
        ("How full each node is (load / capacity)", "percentunit", [
            (f"{P}placement_load / {P}placement_capacity", "{{instance}}")], "timeseries", 6),
        ("Cameras per node", "short", [(f"{P}placement_cameras", "{{instance}}")], "timeseries", 6),
        ("Unplaced cameras (no node has room)", "short", [(f"max({P}placement_unplaced)", "unplaced")], "stat", 6),
        ("Rebalances and overlaps", "short", [
            (f"sum by (instance) (increase({P}placement_rebalances_total[$__rate_interval]))", "{{instance}} rebalances"),
            (f"sum by (camera) (increase({P}placement_overlaps_total[$__rate_interval]))", "{{camera}} overlapped")],
         "timeseries", 6),
        ("Cameras on their way between nodes (s)", "s", [
            (f"max by (camera) ({P}placement_moving_seconds)", "{{camera}}")], "timeseries", 6),
        ("Group health (each should stay 0)", "short", [
            (f"sum by (instance) (increase({P}placement_stalls_total[$__rate_interval]))", "{{instance}} stalls"),
            (f"max({P}placement_lists_differ)", "nodes with another camera list"),
            (f"max({P}placement_frozen)", "unreadable members (placement frozen)"),
            (f"sum({P}placement_refused)", "cameras refused"),
            (f"count({P}placement_joined == 0)", "nodes out of the group")], "timeseries", 6),
    ]),
    ("GPU (NVML; on the CPU path only the models' memory)", [
        ("GPU utilisation", "percentunit", [(f"{P}gpu_utilization_ratio", "GPU {{gpu}}")], "timeseries", 12),
        ("GPU memory", "bytes", [(f"{P}gpu_memory_used_bytes", "GPU {{gpu}} used"),
                                 (f"{P}gpu_memory_total_bytes", "GPU {{gpu}} total")], "timeseries", 12),
        ("Memory by model, frame pools and decoders (gpu.memory_budget_mb; gpu=cpu: the CPU path's models)", "bytes", [
            (f"sum by (instance, gpu, use) ({P}gpu_memory_bytes)", "{{instance}} {{gpu}} {{use}}"),
            (f"{P}gpu_memory_budget_bytes", "{{instance}} {{gpu}} budget")], "timeseries", 12),
    ]),
]


def panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str, x: int, y: int, w: int) -> dict:
    grafana_type = {"stat": "stat", "state": "state-timeline"}.get(kind, "timeseries")
    out = {
        "id": pid, "type": grafana_type, "title": title, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
    right = [legend for _, legend in targets if "right axis" in legend]
    if right:
        out["fieldConfig"]["overrides"] = [{"matcher": {"id": "byName", "options": name},
                                            "properties": [{"id": "custom.axisPlacement", "value": "right"},
                                                           {"id": "unit", "value": "short"}]} for name in right]
    return out


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for title, unit, targets, kind, w in row_panels:
            if x + w > 24:
                x, y = 0, y + 8
            panels.append(panel(pid, title, unit, targets, kind, x, y, w))
            pid, x = pid + 1, x + w
        y += 8
    return {
        "uid": "rtsp-pipeline", "title": "RTSP pipeline", "tags": ["rtsp-pipeline"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "editable": True, "graphTooltip": 1,
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "camera", "label": "Camera", "type": "query", "datasource": DS,
             "query": {"query": f"label_values({P}camera_up, camera)", "refId": "cameras"},
             "definition": f"label_values({P}camera_up, camera)", "refresh": 2,
             "multi": True, "includeAll": True, "current": {"text": "All", "value": "$__all"}},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed dashboard is out of date")
    args = parser.parse_args()
    if args.check:
        if not OUT.exists() or OUT.read_text() != render():
            print(f"{OUT} is out of date: run scripts/gen/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
