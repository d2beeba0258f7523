"""Several nodes, one camera list: daemons with `placement.mode: kafka-group` on a real broker
(Tansu) and a real RTSP server, as processes (the variant that runs where no Docker engine does;
each daemon its own node id, ports and spool). Checked in Kafka and on each node's /readyz, the
way an operator would: every camera on exactly one node with load following capacity; kill -9 of
a node and its cameras back on the others within session timeout + 10 s while the others'
cameras go on uninterrupted; the node back taking a share, moving only what moves, never a camera
on two nodes at once; SIGTERM moving cameras in seconds; cameras added by SIGHUP placed without a
restart; more cameras than the group can take reported unplaced and placed when a node joins; a
node cut off from the broker keeping its cameras and spool, everything it made arriving, the
overlap counted. Assertions are "within a bound", never exact rebalance counts (Tansu's
coordinator differs from Apache Kafka's in timing)."""
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import wait_for
from scripts.lab.daemons import PlacementCluster, http_get, metric_values, placed_runs
from scripts.lab.network import NetNamespace
from scripts.lab.storm import overlaps

SESSION_S, HEARTBEAT_S = 6, 1
BOUND_S = SESSION_S + 10  # the bound for a failover


@pytest.fixture(scope="module")
def camera_server(tmp_path_factory):
    clip = make_clip(tmp_path_factory.mktemp("placement") / "small.mp4", 320, 240)
    with RtspServer({"cam": clip}) as server:
        yield server


def assert_never_on_two_nodes_at_once(records):
    """Per camera, the runs (node, run_id) follow each other in time, from what reached Kafka: a run
    begins only after the previous one's last frame (not one look at each node in turn)."""
    assert not overlaps(records), overlaps(records)


def assert_uninterrupted(records, cameras, since: float):
    """Each of `cameras` kept one run from before `since` on, with no gap in seq."""
    by_cam = placed_runs(records)
    for cam in cameras:
        later = [(node, run, seq) for node, run, seq, at in by_cam[cam] if at >= since]
        assert len({run for _, run, _ in later}) == 1, (cam, {run for _, run, _ in later})
        run = later[0][1]
        seqs = [seq for _, r, seq, _ in by_cam[cam] if r == run]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (cam, seqs[:5])


def assert_moved_within(records, cameras, dead: str, bound: float):
    """Each of `cameras` (the dead node's) next seen in Kafka from another node within `bound` s of its last frame from it."""
    by_cam = placed_runs(records)
    for cam in cameras:
        before = [at for node, _, _, at in by_cam[cam] if node == dead]
        moved = [at for node, _, _, at in by_cam[cam] if node != dead]
        assert moved and min(moved) - max(before) <= bound, (cam, min(moved) - max(before) if moved else None)


def costs(cluster, placed):
    load = defaultdict(float)
    for cam, node in placed.items():
        load[node] += cluster.cameras[cam]
    return load


@pytest.mark.timeout(420)
def test_failover_comeback_and_scale_in_move_only_what_must_move(tmp_path, camera_server, broker):
    cameras = {f"cam-{i}": fps for i, fps in enumerate([2, 2, 2, 4, 4, 1, 1, 2, 4, 2])}  # mixed cost, total 24
    cluster = PlacementCluster(tmp_path, camera_server, broker.bootstrap, cameras, session_s=SESSION_S,
                               heartbeat_s=HEARTBEAT_S)
    try:
        for node, capacity in (("node-a", 20), ("node-b", 20), ("node-c", 40)):
            cluster.start(node, capacity)
        placed = cluster.wait_placed(90, "every camera on exactly one node")
        load = costs(cluster, placed)
        assert load["node-c"] >= 1.4 * max(load["node-a"], load["node-b"]) - 4, load  # twice the capacity: ~twice the cost
        time.sleep(3)

        # kill -9: the dead node's cameras run elsewhere within the bound; the others' go on
        dead = [c for c, n in placed.items() if n == "node-a"]
        survivors_cams = [c for c, n in placed.items() if n != "node-a"]
        killed_at = cluster.kill("node-a")
        after = cluster.wait_placed(BOUND_S + 20, "the dead node's cameras to run elsewhere")
        failover_s = time.time() - killed_at
        assert set(after.values()) <= {"node-b", "node-c"} and failover_s <= BOUND_S + 5, failover_s
        time.sleep(4)
        records = cluster.records()
        assert_uninterrupted(records, survivors_cams, since=killed_at - 2)
        assert_moved_within(records, dead, "node-a", BOUND_S + 5)  # no camera out of Kafka for longer than the bound

        # the node comes back: it takes a share; only the cameras that move restart; none on two nodes at once
        back_at = time.time()
        cluster.start("node-a", 20)
        wait_for(lambda: cluster.placed() and "node-a" in cluster.placed().values(), 60, "node-a to get a share")
        settled = cluster.wait_settled(30, "the group to settle")  # not mid-move: seen in CI, a camera still
        # on its old node between the two rounds counted as one that stayed
        time.sleep(4)
        stayed = [c for c in settled if settled[c] == after[c]]
        records = cluster.records()
        assert_uninterrupted(records, stayed, since=back_at)
        assert_never_on_two_nodes_at_once(records)

        # SIGTERM: the node leaves the group at once; its cameras move in seconds
        leaving = [c for c, n in settled.items() if n == "node-b"]
        termed_at = cluster.kill("node-b", signal.SIGTERM)
        wait_for(lambda: cluster.placed() and "node-b" not in cluster.placed().values(), 30, "node-b's cameras to move")
        moved_in = time.time() - termed_at
        assert leaving and moved_in < SESSION_S, moved_in  # no session-timeout wait
        time.sleep(3)
        assert_never_on_two_nodes_at_once(cluster.records())
        print(f"failover after kill -9: {failover_s:.1f} s; after SIGTERM: {moved_in:.1f} s")
    finally:
        cluster.stop()


@pytest.mark.timeout(300)
def test_cameras_added_by_sighup_are_placed_and_beyond_capacity_unplaced_until_a_node_joins(
        tmp_path, camera_server, broker):
    cameras = {f"cam-{i}": 5 for i in range(4)}
    cluster = PlacementCluster(tmp_path, camera_server, broker.bootstrap, cameras, session_s=SESSION_S,
                               heartbeat_s=HEARTBEAT_S)
    try:
        for node in ("node-a", "node-b"):
            cluster.start(node, 15)
        placed = cluster.wait_placed(90, "the first four cameras placed")
        time.sleep(2)
        added_at = time.time()
        cluster.cameras.update({"cam-4": 5, "cam-5": 5, "cam-6": 5})  # 35 on a group of 30: one cannot fit
        for node in ("node-a", "node-b"):
            cluster.config(node, 15, cluster.nodes[node][1])
            cluster.nodes[node][0].proc.send_signal(signal.SIGHUP)

        def one_unplaced():
            views = [cluster.readyz(n).get("placement", {}) for n in ("node-a", "node-b")]
            running = set().union(*(cluster.running(n) for n in ("node-a", "node-b")))
            return len(running) == 6 and all(len(v.get("unplaced", [])) == 1 for v in views) and views
        views = wait_for(one_unplaced, 60, "six cameras placed and one reported unplaced")
        unplaced = views[0]["unplaced"][0]
        listed = {c["id"]: c for c in json.loads(http_get(cluster.url("node-a", "/v1/cameras"))[1])["cameras"]}
        assert listed[unplaced]["state"] == "unplaced" and listed[unplaced]["node"] is None  # /v1/cameras: where each runs
        assert {c["node"] for c in listed.values() if c["id"] != unplaced} <= {"node-a", "node-b"}
        assert all(c["state"] == "elsewhere" for c in listed.values() if c["node"] == "node-b")
        shows = []

        def shown_unplaced():  # the leader's map goes out through its publisher: it can trail /readyz a little
            shows.append(subprocess.run([sys.executable, "-m", "pipeline", "placement", "--config",
                                         str(cluster.folder / "node-a.yaml")], capture_output=True, text=True, timeout=60))
            return shows[-1].returncode == 0 and f"unplaced: {unplaced}" in shows[-1].stdout
        assert _quietly_waited(shown_unplaced, 45), shows[-1].stdout + shows[-1].stderr
        shown = shows[-1]
        assert "node-a" in shown.stdout and "node-b" in shown.stdout
        ready = cluster.readyz("node-a")
        assert any("unplaced" in d for d in ready["degraded"]), ready["degraded"]
        metrics = http_get(cluster.url("node-a", "/metrics"))[1]
        assert metric_values(metrics, "rtsp_pipeline_placement_unplaced") == {"": 1.0}
        status = consume(cluster.bootstrap, [f"{cluster.topic}-status"], lambda rs: any(
            r.key == unplaced and r.value["reason"].startswith("unplaced:") for r in rs), 30)
        assert any(r.key == unplaced and r.value["reason"].startswith("unplaced:") for r in status)
        time.sleep(3)
        records = cluster.records()
        now = cluster.where()
        stayed = [c for c in placed if now.get(c) == [placed[c]]]
        assert stayed == list(placed), (placed, now)  # all four stay where they ran
        assert_uninterrupted(records, stayed, since=added_at)  # placed with no restart of the others

        cluster.start("node-c", 15)  # a node joins: the unplaced camera is placed
        final = cluster.wait_placed(60, "every camera placed once node-c joined")
        assert final[unplaced] in ("node-a", "node-b", "node-c")
        wait_for(lambda: cluster.readyz("node-a").get("placement", {}).get("unplaced") == [], 30, "nothing unplaced")
    finally:
        cluster.stop()


@pytest.mark.skipif(NetNamespace.unavailable() is not None, reason=str(NetNamespace.unavailable()))
@pytest.mark.timeout(300)
def test_a_node_cut_off_from_kafka_keeps_its_cameras_and_spool_and_the_overlap_is_counted(tmp_path):
    """node-a in a network namespace of its own (a host of its own), its TCP to the broker dropped
    by iptables there: a network partition, while the camera server stays reachable."""
    namespace = NetNamespace(61)
    clip = make_clip(tmp_path / "small.mp4", 320, 240)
    broker = Broker(host="0.0.0.0", advertised_host=namespace.host_address)  # reachable from both sides
    rtsp = RtspServer({"cam": clip}, address="0.0.0.0")
    cameras = {f"cam-{i}": 2 for i in range(4)}
    try:
        broker.start()
        rtsp.start()
        cluster = PlacementCluster(tmp_path, rtsp, broker.bootstrap, cameras, camera_host=namespace.host_address,
                                   session_s=SESSION_S, heartbeat_s=HEARTBEAT_S)
        try:
            cluster.start("node-a", 20, namespace=namespace)
            cluster.start("node-b", 20)
            placed = cluster.wait_placed(90, "the cameras placed")
            kept = sorted(c for c, n in placed.items() if n == "node-a")
            assert kept
            namespace.block(namespace.host_address, broker.port)  # node-a can no longer reach the broker
            # the group moves node-a's cameras to node-b after the session timeout; node-a keeps them meanwhile
            wait_for(lambda: set(kept) <= cluster.running("node-b"), BOUND_S + 30, "node-b to take node-a's cameras")
            assert set(kept) <= cluster.running("node-a")  # cut off: still running, spooling
            wait_for(lambda: metric_values(http_get(cluster.url("node-a", "/metrics"))[1],
                                           "rtsp_pipeline_publish_queue_depth").get("", 0) > 0, 30, "node-a to spool")
            namespace.unblock(namespace.host_address, broker.port)
            wait_for(lambda: cluster.placed(), 120, "node-a to rejoin and give up what moved")
            wait_for(lambda: metric_values(http_get(cluster.url("node-a", "/metrics"))[1],
                                           "rtsp_pipeline_publish_queue_depth").get("", 1) == 0, 60, "node-a's spool drained")
            overlaps = metric_values(http_get(cluster.url("node-a", "/metrics"))[1],
                                     "rtsp_pipeline_placement_overlaps_total")
            assert sum(overlaps.values()) >= 1, overlaps  # counted
            time.sleep(2)
            records = cluster.records()
        finally:
            cluster.stop()
    finally:
        rtsp.stop()
        broker.stop()
        namespace.close()
    by_cam = placed_runs(records)
    for cam in kept:  # everything node-a made while cut off arrived: its run of the camera is whole
        seqs = sorted(seq for node, _, seq, _ in by_cam[cam] if node == "node-a")
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (cam, seqs[:5])
        assert {node for node, *_ in by_cam[cam]} == {"node-a", "node-b"}  # both ran it: the overlap, visible


def _quietly_waited(check, timeout: float) -> bool:
    """Whether `check` came true within `timeout` s (asked again every second)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(1)
    return False
