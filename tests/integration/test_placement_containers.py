"""Several nodes as separate hosts: the CPU image in containers, each node a host of its own (its
own address, and its host name as its node id: placement.node_id left to its default), with the
broker in a container on a network of its own ("kafka") and the camera server on this host,
reached over a second network ("cameras"). This host does not forward between the two (checked),
so `docker network disconnect kafka` cuts a node from the broker while its cameras stay reachable:
a partition. `docker kill` is a dead node, `docker stop` a scale-in. Run as Kubernetes runs the
image (read-only, unprivileged, no capabilities, the spool on a volume). The process variant
(tests/integration/test_placement.py) runs where no Docker engine starts."""
import time
import uuid
from pathlib import Path

import pytest
import yaml

from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import wait_for
from scripts.lab.daemons import PlacementCluster, captured, http_get, metric_values, placed_runs
from scripts.lab.dockerd import DockerEngine
from tests.integration.conftest import CPU_IMAGE
from tests.integration.test_placement import (
    BOUND_S, HEARTBEAT_S, SESSION_S, assert_moved_within, assert_never_on_two_nodes_at_once, assert_uninterrupted,
    costs,
)

pytestmark = pytest.mark.skipif(DockerEngine.unavailable() is not None, reason=str(DockerEngine.unavailable()))
KAFKA_NET, KAFKA_GATEWAY, BROKER_IP = "placement-kafka", "172.30.234.1", "172.30.234.2"
CAMERA_NET, CAMERA_GATEWAY = "placement-cameras", "172.30.235.1"
NODES = {"node-a": ("172.30.234.11", "172.30.235.11"), "node-b": ("172.30.234.12", "172.30.235.12"),
         "node-c": ("172.30.234.13", "172.30.235.13")}  # node -> its address on each network
PORT = 9108  # every node's metrics and API: each has an address of its own


class ContainerCluster(PlacementCluster):
    """PlacementCluster's daemons as containers of the CPU image, one per node."""

    def __init__(self, engine: DockerEngine, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine
        self.volumes = {node: f"spool-{node}-{uuid.uuid4().hex[:6]}" for node in NODES}

    def start(self, node: str, capacity: float, namespace=None) -> None:
        """Create and start the node's container; a node created before starts again (same volume)."""
        if node in self.nodes:
            self.engine.docker("start", node)
            return
        folder = self.folder / node
        folder.mkdir(mode=0o755)
        data = yaml.safe_load(self.config(node, capacity, PORT, listen="0.0.0.0").read_text())
        data["model"]["path"] = "/opt/rtsp-pipeline/engines/shapes-yolov8n.onnx"
        data["kafka"]["spool"]["folder"] = "/var/lib/rtsp-pipeline/spool"
        del data["placement"]["node_id"]  # the default: the host name
        (folder / "cameras.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (folder / "cameras.yaml").chmod(0o644)
        kafka_ip, camera_ip = NODES[node]
        self.engine.docker(
            "create", "--name", node, "--hostname", node, "--network", KAFKA_NET, "--ip", kafka_ip,
            "--read-only", "--tmpfs", "/tmp", "--user", "10001:10001", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "-v", f"{self.volumes[node]}:/var/lib/rtsp-pipeline",
            "-v", f"{folder}:/etc/rtsp-pipeline:ro", CPU_IMAGE)
        self.engine.docker("network", "connect", "--ip", camera_ip, CAMERA_NET, node)
        self.engine.docker("start", node)
        self.nodes[node], self.hosts[node] = (None, PORT), camera_ip  # the network never cut

    def alive(self) -> list[str]:
        return [n for n in self.nodes if self.state(n)["Running"]]

    def state(self, node: str) -> dict:
        return yaml.safe_load(self.engine.docker("inspect", "-f", "{{json .State}}", node).stdout)

    def kill(self, node: str, stop: bool = False) -> float:
        """docker kill (a dead node), or docker stop (SIGTERM: a scale-in)."""
        at = time.time()
        self.engine.docker(*(("stop", "-t", "30") if stop else ("kill",)), node, timeout=60)
        wait_for(lambda: not self.state(node)["Running"], 30, f"{node} to exit")
        return at

    def log(self, node: str) -> str:
        return self.engine.docker("logs", node, check=False).stdout

    def stop(self) -> None:
        self.engine.docker("rm", "-f", *self.nodes, check=False)
        self.engine.docker("volume", "rm", *self.volumes.values(), check=False)


@pytest.fixture(scope="module")
def networks(docker_engine):
    for name, gateway in ((KAFKA_NET, KAFKA_GATEWAY), (CAMERA_NET, CAMERA_GATEWAY)):
        subnet = gateway.rsplit(".", 1)[0] + ".0/24"
        docker_engine.docker("network", "create", "--subnet", subnet, "--gateway", gateway, name)
    try:
        yield
    finally:
        docker_engine.docker("network", "rm", KAFKA_NET, CAMERA_NET, check=False)


@pytest.fixture(scope="module")
def kafka(docker_engine, tansu_image, networks):
    """The broker in a container on the kafka network only, at BROKER_IP."""
    docker_engine.docker("run", "-d", "--name", "placement-broker", "--network", KAFKA_NET, "--ip", BROKER_IP,
                         "--entrypoint", "/usr/local/bin/tansu", tansu_image, "broker",
                         "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", f"tcp://{BROKER_IP}:9092")
    try:
        wait_for(lambda: _accepts(BROKER_IP, 9092), 30, "the broker container to listen")
        yield f"{BROKER_IP}:9092"
    finally:
        docker_engine.docker("rm", "-f", "placement-broker", check=False)


def _accepts(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.timeout(600)
def test_nodes_as_containers_fail_over_come_back_survive_a_partition_and_scale_in(
        docker_engine, cpu_image, kafka, tmp_path):
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0", \
        "this host forwards between networks: disconnecting a node from the kafka network would not cut it"
    clip = make_clip(tmp_path / "small.mp4", 320, 240)
    cameras = {f"cam-{i}": fps for i, fps in enumerate([2, 2, 2, 4, 4, 1, 1, 2])}  # mixed cost, total 18
    with RtspServer({"cam": clip}, address="0.0.0.0") as rtsp:
        cluster = ContainerCluster(docker_engine, tmp_path, rtsp, kafka, cameras, camera_host=CAMERA_GATEWAY,
                                   session_s=SESSION_S, heartbeat_s=HEARTBEAT_S)
        try:
            for node, capacity in (("node-a", 15), ("node-b", 15), ("node-c", 30)):
                cluster.start(node, capacity)
            placed = cluster.wait_placed(120, "every camera on exactly one node")
            load = costs(cluster, placed)
            assert load["node-c"] >= 1.4 * max(load["node-a"], load["node-b"]) - 4, load  # twice the capacity
            nodes_seen = {r.value.get("node") for r in cluster.records()}
            assert {"node-a", "node-b", "node-c"} <= nodes_seen, nodes_seen  # node ids from the host names

            # docker kill: a dead node; its cameras run elsewhere within the bound, the others' go on
            dead = [c for c, n in placed.items() if n == "node-a"]
            others = [c for c, n in placed.items() if n != "node-a"]
            killed_at = cluster.kill("node-a")
            after = cluster.wait_placed(BOUND_S + 20, "the dead node's cameras to run elsewhere")
            failover_s = time.time() - killed_at
            assert dead and set(after.values()) <= {"node-b", "node-c"} and failover_s <= BOUND_S + 5, failover_s
            time.sleep(3)
            records = cluster.records()
            assert_uninterrupted(records, others, since=killed_at - 2)
            assert_moved_within(records, dead, "node-a", BOUND_S + 5)

            # the same container starts again on its volume: it takes a share, only what moves restarts
            back_at = time.time()
            cluster.start("node-a", 15)
            wait_for(lambda: cluster.placed() and "node-a" in cluster.placed().values(), 90, "node-a to get a share")
            settled = cluster.wait_settled(30, "the group to settle")
            time.sleep(3)
            records = cluster.records()
            assert_uninterrupted(records, [c for c in settled if settled[c] == after[c]], since=back_at)
            assert_never_on_two_nodes_at_once(records)

            # docker network disconnect: node-c cut from the broker, its cameras still reachable
            cut = sorted(c for c, n in settled.items() if n == "node-c")
            docker_engine.docker("network", "disconnect", KAFKA_NET, "node-c")
            camera_side = cluster.url("node-c", "")
            wait_for(lambda: set(cut) <= cluster.running("node-a") | cluster.running("node-b"), BOUND_S + 30,
                     "the group to move node-c's cameras")
            assert set(cut) <= cluster.running("node-c"), "node-c gave up cameras while cut off"
            wait_for(lambda: _metric(camera_side, "rtsp_pipeline_publish_queue_depth") > 0, 30, "node-c to spool")
            docker_engine.docker("network", "connect", "--ip", NODES["node-c"][0], KAFKA_NET, "node-c")
            wait_for(lambda: cluster.placed(), 120, "node-c to rejoin and give up what moved")
            healed_at = time.time()
            wait_for(lambda: _metric(camera_side, "rtsp_pipeline_publish_queue_depth", 1) == 0, 60, "node-c's spool drained")
            assert _metric(camera_side, "rtsp_pipeline_placement_overlaps_total") >= 1  # the overlap, counted
            time.sleep(2)
            records = cluster.records()
            by_cam = placed_runs(records)
            for cam in cut:  # all node-c made while cut off arrived: each of its runs of the camera is whole
                runs = {run for node, run, _, _ in by_cam[cam] if node == "node-c"}
                for run in runs:
                    seqs = sorted(seq for _, r, seq, _ in by_cam[cam] if r == run)
                    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (cam, seqs[:5])
                assert runs and len({node for node, *_ in by_cam[cam]}) >= 2  # another node ran it too: the overlap

            # docker stop: SIGTERM, the node leaves at once; its cameras move in seconds, exit 0
            settled = cluster.wait_settled(30, "the group to settle")
            leaving = [c for c, n in settled.items() if n == "node-b"]
            stopped_at = cluster.kill("node-b", stop=True)
            wait_for(lambda: cluster.placed() and "node-b" not in cluster.placed().values(), 30,
                     "node-b's cameras to move")
            moved_in = time.time() - stopped_at
            assert cluster.state("node-b")["ExitCode"] == 0
            assert leaving and moved_in < SESSION_S, moved_in
            time.sleep(3)
            assert_never_on_two_nodes_at_once([r for r in cluster.records() if captured(r) > healed_at])  # the cut's overlap is over
            logs = {node: cluster.log(node) for node in NODES}
            print(f"containers: failover after docker kill {failover_s:.1f} s; after docker stop {moved_in:.1f} s")
        finally:
            cluster.stop()
    for node, log in logs.items():
        assert "Traceback" not in log, (node, log[-3000:])


def _metric(base: str, name: str, default: float = 0) -> float:
    values = metric_values(http_get(f"{base}/metrics")[1], name)
    return sum(values.values()) if values else default
