"""A restart is the commonest event in a service's life: the daemon is started twice on one state
folder, as an operator (or systemd, or Kubernetes) would, and each run is checked in Kafka: it
streams, and every camera's messages of every run_id are there from seq 0 with no gap.

1. after a clean stop with everything delivered (the state every restart starts on: it crashed);
2. after a stop with the broker unreachable (the second run sends the first run's backlog);
3. after kill -9 mid-run;
4. after a full-disk spell (stopped while full, started again while still full);
and an upgrade: a spool folder left by an earlier release, delivered by today's daemon."""
import json
import random
import shutil
import signal
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from scripts.lab.broker import Broker, consume
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.disk import SmallDisk
from scripts.lab.network import NetworkCut

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "spool"
STOP_TIMEOUT_S = 3


def runs(records, topic) -> dict[tuple[str, str], list[int]]:
    """(camera, run_id) -> detection seqs in delivery order, repeats removed (the documented dedupe)."""
    seen, out = set(), defaultdict(list)
    for r in records:
        if r.topic == topic:
            key = (r.key, r.value["run_id"], r.value["frame"]["seq"])
            if key not in seen:
                seen.add(key)
                out[key[:2]].append(key[2])
    return out


def assert_gap_free(by_run, cameras, count_runs):
    """Every camera has `count_runs` runs, each delivered from seq 0 in order with no gap."""
    for camera in cameras:
        theirs = {run: seqs for (cam, run), seqs in by_run.items() if cam == camera}
        assert len(theirs) == count_runs, (camera, {r: len(s) for r, s in theirs.items()})
        for run, seqs in theirs.items():
            assert seqs == list(range(len(seqs))), (camera, run, seqs[:5], len(seqs))


def inferred(port) -> dict[str, float]:
    values = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
    return {key.split('"')[1]: v for key, v in values.items()}


def streaming(bootstrap, topic, cameras, run_count, per_run=8, timeout=90, since=None):
    """Consume until every camera has `run_count` runs with at least `per_run` messages in the newest."""
    def enough(records):
        by_run = runs(records, topic)
        for cam in cameras:
            theirs = [seqs for (c, _), seqs in by_run.items() if c == cam]
            if len(theirs) < run_count or min(len(s) for s in theirs[-1:]) < per_run:
                return False
        return True
    records = consume(bootstrap, [topic], enough, timeout)
    assert enough(records), {k: len(v) for k, v in runs(records, topic).items()}
    return records


def sigterm(daemon) -> int:
    daemon.proc.send_signal(signal.SIGTERM)
    return daemon.proc.wait(STOP_TIMEOUT_S + 30)


def clean_log(daemon):
    log = daemon.log_text()
    assert "Traceback" not in log and '"cannot run"' not in log, log[-3000:]
    return log


def test_a_restart_after_a_clean_stop_with_everything_delivered_streams_again(tmp_path, rtsp_server, broker):
    """The default state folder ($STATE_DIRECTORY, as under systemd), SIGTERM, start again: twice."""
    topic, port = f"restart-{uuid.uuid4().hex[:8]}", free_port()
    cameras = ["a", "b"]
    state = tmp_path / "state"
    config = daemon_config(tmp_path / "restart.yaml", MODEL, broker.bootstrap,
                           [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"spool": {}, "stop_timeout_s": STOP_TIMEOUT_S})  # the default folder
    for run in (1, 2, 3):
        daemon = Daemon(config, tmp_path / f"run{run}.log", env={"STATE_DIRECTORY": str(state)})
        daemon.start()
        try:
            streaming(broker.bootstrap, topic, cameras, run)
            wait_for(lambda: http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200, 10, "metrics")
            wait_for(lambda: metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1],
                                           "rtsp_pipeline_publish_queue_depth").get("", 1) == 0, 30, "all delivered")
            assert sigterm(daemon) == 0
        finally:
            daemon.stop()
        clean_log(daemon)
        assert list((state / "spool").glob("*.seg")), "a clean stop leaves its delivered tail segment"
    records = consume(broker.bootstrap, [topic], lambda rs: False, 5)
    assert_gap_free(runs(records, topic), cameras, 3)
    assert "spool holds messages from an earlier run" not in (tmp_path / "run2.log").read_text()  # nothing sent twice


def test_a_restart_sends_the_backlog_a_stop_with_the_broker_unreachable_left(tmp_path, rtsp_server):
    topic, port, kafka_port = f"backlog-{uuid.uuid4().hex[:8]}", free_port(), free_port()
    broker = Broker(advertised_port=kafka_port)
    broker.start()
    network = NetworkCut(broker.port, kafka_port)
    cameras = ["a", "b"]
    config = daemon_config(tmp_path / "backlog.yaml", MODEL, f"127.0.0.1:{network.port}",
                           [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S})
    try:
        first = Daemon(config, tmp_path / "first.log")
        first.start()
        try:
            before = streaming(broker.bootstrap, topic, cameras, 1, per_run=3)
            run_one = {cam: run for cam, run in runs(before, topic)}
            network.cut()
            time.sleep(6)  # the cameras go on; their messages wait in the spool
            made = inferred(port)
            assert sigterm(first) == 0
        finally:
            first.stop()
        kept = next(json.loads(line) for line in clean_log(first).splitlines() if '"publisher stopped"' in line)
        assert kept["undelivered_kept_in_spool"] >= 40, kept
        network.restore()
        second = Daemon(config, tmp_path / "second.log")
        second.start()
        try:
            def all_of_run_one(records):
                by_run = runs(records, topic)
                return all(len(by_run[(cam, run_one[cam])]) >= made[cam] for cam in cameras)
            streaming(broker.bootstrap, topic, cameras, 2)
            records = consume(broker.bootstrap, [topic], all_of_run_one, 60)
            assert sigterm(second) == 0
        finally:
            second.stop()
        assert "spool holds messages from an earlier run" in clean_log(second)
    finally:
        network.close()
        broker.stop()
    assert all_of_run_one(records), (made, {k: len(v) for k, v in runs(records, topic).items()})
    assert_gap_free(runs(records, topic), cameras, 2)


def test_a_restart_after_kill_9_mid_run_streams_and_keeps_what_was_spooled(tmp_path, rtsp_server, broker):
    topic, port = f"kill-{uuid.uuid4().hex[:8]}", free_port()
    cameras = ["a", "b"]
    config = daemon_config(tmp_path / "kill.yaml", MODEL, broker.bootstrap,
                           [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port)
    first = Daemon(config, tmp_path / "first.log")
    first.start()
    try:
        streaming(broker.bootstrap, topic, cameras, 1, per_run=3)
        time.sleep(random.uniform(0, 2))  # some moment mid-run
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        first.stop()
    second = Daemon(config, tmp_path / "second.log")
    second.start()
    try:
        records = streaming(broker.bootstrap, topic, cameras, 2)
        assert sigterm(second) == 0
    finally:
        second.stop()
    clean_log(second)
    assert_gap_free(runs(records, topic), cameras, 2)


@pytest.mark.skipif(SmallDisk.unavailable() is not None, reason=str(SmallDisk.unavailable()))
def test_a_restart_after_a_full_disk_spell_starts_degraded_and_loses_nothing(tmp_path, rtsp_server, broker):
    """Stopped while the spool's disk is full (the broker up: messages held in memory still go out),
    started again on the still-full disk (degraded, not failed), then the disk frees."""
    topic, port = f"fullrestart-{uuid.uuid4().hex[:8]}", free_port()
    cameras = ["a"]
    disk = SmallDisk(tmp_path / "fs", kib=1024)
    config = daemon_config(tmp_path / "full.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 10)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S, "spool": {"folder": str(disk.path / "spool")}})
    try:
        first = Daemon(config, tmp_path / "first.log")
        first.start()
        try:
            streaming(broker.bootstrap, topic, cameras, 1, per_run=5)
            disk.keep_full()
            wait_for(lambda: "spool cannot write to disk" in first.log_text(), 30, "the full spell to start")
            streaming(broker.bootstrap, topic, cameras, 1, per_run=25)  # still delivered, from memory
            assert sigterm(first) == 0
        finally:
            first.stop()
        second = Daemon(config, tmp_path / "second.log")
        second.start()
        try:
            wait_for(lambda: "spool cannot write to disk" in second.log_text(), 60, "a degraded start")
            streaming(broker.bootstrap, topic, cameras, 2, per_run=5)
            disk.free()
            wait_for(lambda: "spool writing to disk again" in second.log_text(), 30, "the spell's end")
            records = streaming(broker.bootstrap, topic, cameras, 2, per_run=30)
            assert sigterm(second) == 0
        finally:
            second.stop()
        clean_log(first)
        clean_log(second)
    finally:
        disk.close()
    assert_gap_free(runs(records, topic), cameras, 2)


@pytest.mark.parametrize("fixture", ["4488e7b-backlog", "66544af-delivered"])
def test_todays_daemon_delivers_a_spool_an_earlier_release_left(fixture, tmp_path, rtsp_server):
    """Upgrade: the folder as that release left it (tests/fixtures/spool), then today's daemon."""
    manifest = json.loads((FIXTURES / fixture / "manifest.json").read_text())
    broker = Broker()  # its own: the fixture's records name the topics `detections` and `camera-status`
    broker.start()
    folder = shutil.copytree(FIXTURES / fixture / "spool", tmp_path / "spool")
    config = daemon_config(tmp_path / "upgrade.yaml", MODEL, broker.bootstrap, [("cam", rtsp_server.url("classic"), 5)],
                           metrics_port=free_port(), kafka={"spool": {"folder": str(folder)}})
    daemon = Daemon(config, tmp_path / "upgrade.log")
    daemon.start()
    try:
        wanted = {(w["topic"], w["key"], w["value"]) for w in manifest["undelivered"]}

        def delivered(records):
            got = {(r.topic, r.key, json.dumps(r.value)) for r in records}
            return wanted <= got and sum(1 for r in records if r.key == "cam") >= 8
        records = consume(broker.bootstrap, ["detections", "camera-status"], delivered, 90)
        assert sigterm(daemon) == 0
    finally:
        daemon.stop()
        broker.stop()
    clean_log(daemon)
    got = {(r.topic, r.key, json.dumps(r.value)) for r in records}
    assert wanted <= got, f"{len(wanted - got)} of {len(wanted)} records of {fixture} not delivered"
    old = [r.value["frame"]["seq"] for r in records if r.key == "gate-1" and r.topic == "detections"]
    assert old == sorted(old)  # in order
    assert_gap_free(runs(records, "detections"), ["cam"], 1)  # and today's camera streams


@pytest.mark.timeout(600)
def test_kill_9_and_restart_cycles_with_the_broker_up_and_down_lose_nothing_the_spool_took(tmp_path):
    """The short version of scripts/bench/torture_restart.py (20 cycles there, figures in BENCHMARKS)."""
    from scripts.bench.torture_restart import run

    result = run(cycles=4, cameras=2, work=tmp_path, seed=random.randrange(1 << 16))
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}))
    assert result["starts_that_came_up"] == result["starts"] == 5, result["cycles"]
    assert result["held_at_kills"] > 0  # the broker was cut at some kills: the spool held messages then
    assert result["held_missing_in_kafka"] == 0 and result["runs_with_gaps"] == {}
    assert result["conflicting_duplicates"] == 0 and result["runs_in_kafka"] == 5 and result["final_exit"] == 0
