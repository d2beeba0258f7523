"""A node whose spool disk stalls for longer than the session timeout stays in its placement group
(issue 33, finding 8). The stall is real to the process: its fsyncs wait while a flag file exists
(scripts/lab/stall_fsync.c, preloaded), so the daemon's event loop hangs in the spool's once-a-
second fsync for 15 s against a 6 s session. The group member heartbeats from a thread and loop
of its own, so nothing moves: the other node never takes its cameras, and no camera runs twice.
With the member on the daemon's loop (as before), the node is evicted and its cameras are started
on the other node while its own camera threads still run them."""
import shutil
import time

import pytest

from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.daemons import PlacementCluster, http_get, metric_values
from scripts.lab.disk import fsync_stall_library
from scripts.lab.storm import overlaps

SESSION_S, STALL_S = 6, 15


@pytest.fixture(scope="module")
def camera_server(tmp_path_factory):
    clip = make_clip(tmp_path_factory.mktemp("stall") / "small.mp4", 320, 240)
    with RtspServer({"cam": clip}) as server:
        yield server


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the fsync-stall library")
@pytest.mark.timeout(240)
def test_a_spool_disk_stalled_longer_than_the_session_timeout_does_not_get_the_node_evicted(
        tmp_path, camera_server, broker):
    flag = tmp_path / "stall-now"
    env = {"LD_PRELOAD": str(fsync_stall_library(tmp_path)), "STALL_FSYNC_WHILE": str(flag)}
    cameras = {f"cam-{i}": 2 for i in range(4)}
    cluster = PlacementCluster(tmp_path, camera_server, broker.bootstrap, cameras, session_s=SESSION_S,
                               heartbeat_s=1)
    try:
        cluster.start("node-a", 20, env=env)
        cluster.start("node-b", 20)
        placed = cluster.wait_settled(90, "both nodes placed and settled")
        on_a = sorted(c for c, n in placed.items() if n == "node-a")
        generation = cluster.readyz("node-b")["placement"]["generation"]
        assert on_a
        flag.touch()  # node-a's next fsync (the spool's, once a second) hangs until the flag goes
        stalled_at = time.time()
        time.sleep(3)
        assert http_get(cluster.url("node-a", "/readyz"), timeout=2)[0] == 0  # its loop is stuck: no answer
        time.sleep(STALL_S - 3)
        flag.unlink()
        time.sleep(SESSION_S + 4)  # long enough for an eviction's rebalance to have shown
        view = cluster.readyz("node-b")["placement"]
        assert view["generation"] == generation, view  # no rebalance: node-a was never evicted
        assert cluster.placed() == placed
        records = cluster.records()
        assert not overlaps(records), overlaps(records)
        moved = sorted({r.key for r in records if r.key in on_a and r.value.get("node") == "node-b"})
        assert not moved, f"node-b took {moved} during node-a's disk stall"
        served_during = {r.key for r in records if r.key in on_a and stalled_at < r.received_at}
        assert served_during == set(on_a)  # and node-a's cameras went on (their messages arrived after it)
        metrics = http_get(cluster.url("node-a", "/metrics"))[1]
        assert metric_values(metrics, "rtsp_pipeline_placement_stalls_total") == {"": 0.0}
    finally:
        if flag.exists():
            flag.unlink()
        cluster.stop()
