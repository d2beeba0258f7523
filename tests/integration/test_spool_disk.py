"""Host faults on the spool's disk are a degraded state, never a failed service or a silent loss.

On real filesystems (a small tmpfs the test mounts: needs root, as CI has) with the daemon as a
subprocess and a real broker cut off by the network: a disk that fills up (kept full by a
"recorder" writing beside the spool), a read-only remount, a start on a read-only disk and a
removed folder. What is checked is what an operator and a consumer see: /readyz says degraded
with the reason (still 200: messages keep flowing, held in memory), one log line when the spell
starts and one when it ends, every message that could not be kept is counted, what the spool
held on disk arrives once the broker is back, in order, and SIGTERM exits 0 in time."""
import json
import shutil
import signal
import time
import uuid
from collections import defaultdict

import pytest

from scripts.lab.broker import Broker, consume
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.disk import SmallDisk
from scripts.lab.network import NetworkCut
from tests.integration.test_systemd_notify import NotifyListener

pytestmark = pytest.mark.skipif(SmallDisk.unavailable() is not None, reason=str(SmallDisk.unavailable()))
MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
STOP_TIMEOUT_S = 2
FAULT_LOG, END_LOG = "spool cannot write to disk", "spool writing to disk again"


def readyz(port):
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return status, (json.loads(body) if body else {})


def metrics(port):
    return http_get(f"http://127.0.0.1:{port}/metrics")[1]


def metric(port, name, labels=""):
    return metric_values(metrics(port), name).get(labels, 0)


def not_kept(port):
    """Messages counted as not kept: refused (spool_error), pushed out by the policy, lost by the spool."""
    text = metrics(port)
    return (sum(metric_values(text, "rtsp_pipeline_messages_dropped_total").values())
            + sum(metric_values(text, "rtsp_pipeline_spool_dropped_total").values())
            + sum(metric_values(text, "rtsp_pipeline_spool_lost_total").values()))


def degraded_for(port, *words):
    status, body = readyz(port)
    return status == 200 and body.get("status") == "degraded" and all(w in body["degraded"][0] for w in words)


def seqs(records, topic, run=None):
    """Detection seqs per run in delivery order, repeats removed (the documented dedupe)."""
    seen, out = set(), defaultdict(list)
    for r in records:
        if r.topic == topic and (run is None or r.value["run_id"] == run):
            key = (r.value["run_id"], r.value["frame"]["seq"])
            if key not in seen:
                seen.add(key)
                out[key[0]].append(key[1])
    return out


def received(broker, topic, count, timeout=60):
    """Consume the topic from its start until `count` messages are there; fail if they are not."""
    records = consume(broker.bootstrap, [topic], lambda rs: len(rs) >= count, timeout)
    assert len(records) >= count, f"{len(records)} of {count} messages on {topic} within {timeout} s"
    return records


def stop_in_time(daemon):
    """SIGTERM; the exit code and how long it took."""
    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = daemon.proc.wait(STOP_TIMEOUT_S + 30)
    return code, time.monotonic() - sent


def test_a_full_disk_degrades_keeps_messages_flowing_and_loses_only_what_it_counts(tmp_path, rtsp_server):
    topic, port, kafka_port = f"full-{uuid.uuid4().hex[:8]}", free_port(), free_port()
    broker = Broker(advertised_port=kafka_port)
    broker.start()
    network = NetworkCut(broker.port, kafka_port)
    disk = SmallDisk(tmp_path / "fs", kib=1024)
    config = daemon_config(tmp_path / "full.yaml", MODEL, f"127.0.0.1:{network.port}", [("a", rtsp_server.url("classic"), 10)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S,
                                  "spool": {"folder": str(disk.path / "spool"), "memory_mb": 0.1}})
    daemon = Daemon(config, tmp_path / "full.log")
    daemon.start()
    try:
        received(broker, topic, 10)
        disk.keep_full()  # a recorder beside the spool takes every byte
        at_fill = metric(port, "rtsp_pipeline_frames_inferred_total", '{camera="a"}')
        wait_for(lambda: degraded_for(port, str(disk.path / "spool"), "disk full"), 30, "/readyz to say degraded")
        assert metric(port, "rtsp_pipeline_spool_writable", "") == 0
        # the broker is reachable: messages still go out, held in memory, none dropped
        received(broker, topic, at_fill + 30)
        assert not_kept(port) == 0 and readyz(port)[1]["status"] == "degraded"
        network.cut()  # now the memory allowance (0.1 MiB) fills too: messages are dropped, counted
        wait_for(lambda: not_kept(port) >= 20, 60, "messages to be dropped, counted")
        disk.free()
        at_free = metric(port, "rtsp_pipeline_frames_inferred_total", '{camera="a"}')
        wait_for(lambda: END_LOG in daemon.log_text(), 30, "the spell's end to be logged")
        assert readyz(port)[1]["degraded"] == [] and metric(port, "rtsp_pipeline_spool_writable", "") == 1
        network.restore()
        wait_for(lambda: metric(port, "rtsp_pipeline_publish_queue_depth", "") == 0, 90, "the spool to drain")
        last = metric(port, "rtsp_pipeline_frames_inferred_total", '{camera="a"}')
        counted = not_kept(port)
        records = consume(broker.bootstrap, [topic], lambda rs: sum(map(len, seqs(rs, topic).values())) >= last - counted, 60)
        code, took = stop_in_time(daemon)
    finally:
        daemon.stop()
        disk.close()
        network.close()
        broker.stop()
    delivered = next(iter(seqs(records, topic).values()))
    missing = sorted(set(range(int(last))) - set(delivered))
    assert delivered == sorted(delivered), "out of order"
    assert len(missing) == counted, (len(missing), counted)  # every message not delivered was counted
    assert missing and at_fill <= missing[0] and missing[-1] < at_free + 10  # lost only during the full spell
    log = daemon.log_text()
    assert log.count(FAULT_LOG) == 1 and log.count(END_LOG) == 1  # one line each, not one per message
    assert code == 0 and took < STOP_TIMEOUT_S + 5, (code, took)


def test_sigterm_on_a_full_disk_exits_0_and_the_next_start_sends_what_the_disk_kept(tmp_path, rtsp_server):
    topic, port = f"term-{uuid.uuid4().hex[:8]}", free_port()
    broker = Broker()  # not started yet: the outage
    disk = SmallDisk(tmp_path / "fs", kib=512)
    config = daemon_config(tmp_path / "term.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 10)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S, "spool": {"folder": str(disk.path / "spool")}})
    first = Daemon(config, tmp_path / "first.log")
    first.start()
    try:
        wait_for(lambda: metric(port, "rtsp_pipeline_publish_queue_depth", "") >= 20, 60, "messages to be spooled")
        disk.keep_full()
        wait_for(lambda: metric(port, "rtsp_pipeline_spool_memory_bytes", "") > 0, 30, "messages held in memory")
        code, took = stop_in_time(first)
    finally:
        first.stop()
    disk.free()
    log = first.log_text()
    assert code == 0 and took < STOP_TIMEOUT_S + 5, (code, took)
    assert "cannot run" not in log
    lost_line = next(json.loads(line) for line in log.splitlines() if "could not be written to the spool" in line)
    kept_line = next(json.loads(line) for line in log.splitlines() if '"publisher stopped"' in line)
    assert lost_line["messages"] > 0 and kept_line["undelivered_kept_in_spool"] >= 20
    broker.start()
    second = Daemon(config, tmp_path / "second.log")
    second.start()
    try:
        records = consume(broker.bootstrap, [topic], lambda rs: len(seqs(rs, topic)) == 2, 60)
        records = consume(broker.bootstrap, [topic],
                          lambda rs: sum(map(len, seqs(rs, topic).values())) >= len(records) + 10, 60)
    finally:
        second.stop()
        disk.close()
        broker.stop()
    runs = list(seqs(records, topic).values())
    first_run = runs[0]
    # what the disk held, whole: from seq 0, gap-free, the detections among the kept messages
    assert first_run == list(range(len(first_run))), first_run
    assert len(first_run) >= kept_line["undelivered_kept_in_spool"] - 2  # the rest: camera-status messages


def test_a_read_only_disk_at_start_and_mid_run_degrades_and_sigterm_still_exits_0(tmp_path, rtsp_server, broker):
    topic, port = f"ro-{uuid.uuid4().hex[:8]}", free_port()
    disk = SmallDisk(tmp_path / "fs", kib=1024)
    (disk.path / "spool").mkdir()
    disk.remount(read_only=True)
    config = daemon_config(tmp_path / "ro.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 10)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S, "spool": {"folder": str(disk.path / "spool")}})
    notify = NotifyListener(tmp_path / "notify.sock")  # as systemd: STATUS lines with the watchdog's
    daemon = Daemon(config, tmp_path / "ro.log", env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    daemon.start()
    try:
        # starts degraded (decided: a disk that may come back is no reason to stop the cameras)
        wait_for(lambda: degraded_for(port, str(disk.path / "spool"), "read-only", "remount it read-write"), 60,
                 "/readyz to say degraded")
        received(broker, topic, 10)  # delivered meanwhile
        wait_for(lambda: any(f"spool degraded: spool folder {disk.path / 'spool'}: read-only" in f.get("STATUS", "")
                             for _, f in notify.poll()), 10, "systemd's status line to say so")
        disk.remount(read_only=False)
        wait_for(lambda: END_LOG in daemon.log_text(), 30, "the spell's end to be logged")
        wait_for(lambda: metric(port, "rtsp_pipeline_spool_writable", "") == 1, 10, "spool_writable 1")
        remount_read_only(disk)  # mid-run, as the kernel does after a disk error
        wait_for(lambda: degraded_for(port, "read-only"), 30, "/readyz to say degraded again")
        before = len(consume(broker.bootstrap, [topic], lambda rs: False, 3))
        received(broker, topic, before + 10)  # still delivered
        code, took = stop_in_time(daemon)
    finally:
        daemon.stop()
        notify.close()
        disk.remount(read_only=False)
        disk.close()
    log = daemon.log_text()
    assert code == 0 and took < STOP_TIMEOUT_S + 5, (code, took)
    assert log.count(FAULT_LOG) == 2 and log.count(END_LOG) == 1
    assert "Traceback" not in log and "cannot run" not in log


def remount_read_only(disk, attempts=50):
    """Remount read-only; a write the daemon has in flight makes the kernel refuse for a moment."""
    for _ in range(attempts):
        try:
            disk.remount(read_only=True)
            return
        except Exception:  # noqa: BLE001 - mount says busy; try again
            time.sleep(0.05)
    disk.remount(read_only=True)


def test_a_removed_spool_folder_is_named_with_what_to_do_and_taken_back_once_recreated(tmp_path, rtsp_server, broker):
    topic, port = f"rm-{uuid.uuid4().hex[:8]}", free_port()
    folder = tmp_path / "spool"
    config = daemon_config(tmp_path / "rm.yaml", MODEL, broker.bootstrap, [("a", rtsp_server.url("classic"), 10)],
                           topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                           kafka={"stop_timeout_s": STOP_TIMEOUT_S, "spool": {"folder": str(folder)}})
    daemon = Daemon(config, tmp_path / "rm.log")
    daemon.start()
    try:
        received(broker, topic, 10)
        shutil.rmtree(folder)
        wait_for(lambda: degraded_for(port, str(folder), f"mkdir -p {folder}"), 30, "/readyz to name the folder")
        before = len(consume(broker.bootstrap, [topic], lambda rs: False, 3))
        received(broker, topic, before + 10)  # still delivered
        folder.mkdir()
        wait_for(lambda: END_LOG in daemon.log_text(), 30, "the spell's end to be logged")
        wait_for(lambda: list(folder.glob("*.seg")), 10, "segments in the recreated folder")
        code, took = stop_in_time(daemon)
    finally:
        daemon.stop()
    assert code == 0 and took < STOP_TIMEOUT_S + 5
    assert daemon.log_text().count(FAULT_LOG) == 1


def test_a_spool_folder_that_cannot_be_made_stops_the_start_with_exit_1_and_says_which(tmp_path, rtsp_server):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool folder should be")
    config = daemon_config(tmp_path / "bad.yaml", MODEL, f"127.0.0.1:{free_port()}", [("a", rtsp_server.url("classic"), 5)],
                           kafka={"spool": {"folder": str(blocker / "spool")}})
    daemon = Daemon(config, tmp_path / "bad.log")
    daemon.start()
    try:
        code = daemon.proc.wait(60)
    finally:
        daemon.stop()
    line = next(json.loads(line) for line in daemon.log_text().splitlines() if '"cannot run"' in line)
    assert code == 1 and str(blocker / "spool") in line["error"] and "kafka.spool.folder" in line["error"]
    assert "Traceback" not in daemon.log_text()  # a clean stop of what had started (it crashed before)
