"""The running cameras have one owner (pipeline.fleet), and reload, placement and shutdown go
through it one change at a time (issues 32 and 33). The daemon's Runtime runs here for real, in
this process, with two stand-ins: camera workers whose threads end only when the test lets them
(GatedWorker, so a change can be caught half-way), and the group coordinator played in-process
(FakeGroup, so an assignment arrives exactly then). No camera, broker or GPU is needed: the
stub engine, and a Kafka address that refuses (the publisher keeps retrying, as it would)."""
import asyncio

import pytest

from pipeline.app import Runtime
from pipeline.config import load_config
from scripts.lab.daemons import PLACEMENT_MODEL, daemon_config
from tests.unit.placement_fakes import FakeGroup, SimpleNode, Workers, eventually

pytestmark = pytest.mark.timeout(90)


def write_config(path, cameras: dict[str, float]):
    return daemon_config(path, PLACEMENT_MODEL, "127.0.0.1:9", [(c, f"rtsp://127.0.0.1:9/{c}", fps)
                                                                for c, fps in cameras.items()],
                         kafka={"stop_timeout_s": 1},
                         placement={"mode": "kafka-group", "group": "g", "node_id": "node-a", "capacity": 100})


def runtime(path, group, workers) -> Runtime:
    return Runtime(load_config(path), config_path=path, worker_factory=workers, api_tokens=[],
                   member_options={"consumer_factory": group.consumer, "own_thread": False})


async def running(tmp_path, cameras: dict[str, float]):
    """A daemon of one node running `cameras` (the group gave it all): (daemon, its task, group, workers)."""
    group, workers = FakeGroup(), Workers()
    path = write_config(tmp_path / "a.yaml", cameras)
    daemon = runtime(path, group, workers)
    task = asyncio.get_running_loop().create_task(daemon.run())
    await eventually(lambda: set(workers.live()) == set(cameras), timeout=30, what="every camera running")
    return daemon, task, group, workers


async def reload_stuck_stopping(daemon, workers, cameras: dict[str, float]) -> asyncio.Task:
    """A reload to `cameras`, caught while it waits for a stopped camera's thread to end."""
    write_config(daemon._config_path, cameras)
    workers.open.clear()  # camera threads now end only when let
    reload = asyncio.get_running_loop().create_task(daemon.reload())
    await eventually(lambda: any(w.stopping for w in workers.made), what="the reload stopping a camera")
    return reload


def test_a_sighup_racing_a_rebalance_leaves_each_camera_running_once(tmp_path):
    """Finding 1: reload restarting a changed camera awaited its thread's end; an assignment that
    still listed the camera started it meanwhile, then reload started it again and orphaned the
    first worker (running for good, stopped by nobody). Fails when a change starts a camera that
    already runs (as 19caf2b's reload did: it started changed cameras whatever ran)."""
    async def main():
        daemon, task, group, workers = await running(tmp_path, {"cam-a": 2, "cam-b": 2})
        reload = await reload_stuck_stopping(daemon, workers, {"cam-a": 3, "cam-b": 2})  # cam-a's fps changed
        await group.rebalance()  # an assignment that still lists cam-a arrives now
        await asyncio.sleep(0.2)
        workers.open.set()
        assert await reload
        await eventually(lambda: not daemon._fleet._lock.locked(), what="the fleet idle")
        live = workers.live()
        assert {cam: len(ws) for cam, ws in live.items()} == {"cam-a": 1, "cam-b": 1}, live
        assert live["cam-a"][0].camera.fps == 3
        daemon.request_stop()
        assert await task == 0
        assert workers.live() == {}
    asyncio.run(main())


def test_a_camera_the_group_takes_away_while_a_reload_restarts_it_ends_on_the_new_node_only(tmp_path):
    """Finding 1, the other order: while a reload restarts cam-a, a node joins and the plan takes
    cam-a from this node (round one of a move), applied while the reload still waits. The end:
    cam-a on the new node only. (The fleet's lock makes the assignment wait for the reload; without
    it the reload starts cam-a here again, and the re-asked round two still moves it to node-b, later:
    this outcome holds either way, the next test shows the lock.)"""
    async def main():
        daemon, task, group, workers = await running(tmp_path, {"cam-a": 2, "cam-b": 2})
        reload = await reload_stuck_stopping(daemon, workers, {"cam-a": 3, "cam-b": 2})
        other = SimpleNode("node-b", {"cam-a": 3.0, "cam-b": 2.0})
        member_b = other.member(group)
        await member_b.start()  # the spread takes cam-a from node-a now
        await asyncio.sleep(0.3)  # its assignment is applied while the reload still waits for cam-a's thread
        workers.open.set()
        assert await reload
        await eventually(lambda: other.running == {"cam-a"} and set(workers.live()) == {"cam-b"}, timeout=15,
                         what="cam-a on node-b only")
        daemon.request_stop()
        assert await task == 0
        await member_b.stop()
    asyncio.run(main())


def test_shutdown_with_an_assignment_arriving_stops_everything_and_leaves_the_group(tmp_path):
    """Finding 5: shutdown iterated the running cameras while an assignment removed some, and
    crashed (dictionary changed size), skipping LeaveGroup and the publisher's flush. Now the
    fleet is closed first: the assignment changes nothing, and the daemon stops with 0."""
    async def main():
        cameras = {f"cam-{i}": 2 for i in range(4)}
        daemon, task, group, workers = await running(tmp_path, cameras)
        workers.open.clear()
        daemon.request_stop()
        await eventually(lambda: any(w.stopping for w in workers.made), what="shutdown joining camera threads")
        other = SimpleNode("node-b", {c: float(f) for c, f in cameras.items()})
        member_b = other.member(group)
        await member_b.start()  # a node joins now: the plan takes cameras from node-a
        await asyncio.sleep(0.2)
        workers.open.set()
        assert await asyncio.wait_for(task, 30) == 0
        assert workers.live() == {}
        assert group.consumers[0].stopped  # left the group (LeaveGroup), after its cameras stopped
        await member_b.stop()
    asyncio.run(main())


def test_a_reload_logs_unchanged_cameras_of_the_list_not_of_this_node(tmp_path, caplog):
    """Seen in issue 33: a node running no cameras logged "unchanged": -6 after a SIGHUP."""
    async def main():
        daemon, task, group, workers = await running(tmp_path, {"cam-a": 2, "cam-b": 2, "cam-c": 2})
        write_config(daemon._config_path, {"cam-a": 2, "cam-b": 5, "cam-d": 2})
        with caplog.at_level("INFO"):
            assert await daemon.reload()
        daemon.request_stop()
        assert await task == 0
        return [r for r in caplog.records if r.getMessage() == "config reloaded"][0].fields
    fields = asyncio.run(main())
    assert fields["unchanged"] == 1 and fields["added"] == ["cam-d"] and fields["removed"] == ["cam-c"]


def test_two_changes_stopping_the_same_cameras_one_after_the_other_not_interleaved():
    """The fleet itself: a change stopping two cameras is joining the first one's thread when
    another change (an assignment) stops the second too. Made one at a time, the second finds
    what the first left; interleaved, both would stop the second camera (KeyError, and the
    reload or the assignment aborted half-way). Fails without the fleet's lock."""
    from pipeline.config import CameraConfig
    from pipeline.fleet import Fleet
    from pipeline.lanes import Lane
    from pipeline.metrics import Metrics
    from pipeline.s3_batch import DeadlineBatcher
    from pipeline.s5_track import Trackers, TrackSettings

    async def main():
        metrics = Metrics()
        lane = Lane(None, [], None, DeadlineBatcher(4, 0.02, 1.0, lambda cam, reason: None), None,
                    Trackers(lambda cam: TrackSettings(0.3), metrics), None)
        workers = Workers()
        fleet = Fleet(lambda camera: [lane], lambda camera, route: workers(camera, None, None, None, None, None))
        cameras = [CameraConfig(id=c, url=f"rtsp://h/{c}") for c in ("cam-a", "cam-b", "cam-c")]
        await fleet.converge(cameras)
        workers.open.clear()
        reload = asyncio.get_running_loop().create_task(fleet.converge(cameras[2:]))  # stops a, then b
        await eventually(lambda: any(w.stopping for w in workers.made), what="the first stop under way")
        assignment = asyncio.get_running_loop().create_task(fleet.converge([cameras[0], cameras[2]]))
        await asyncio.sleep(0.1)
        workers.open.set()
        first, second = await reload, await assignment
        assert first.stopped == ["cam-a", "cam-b"] and second.started == ["cam-a"] and second.stopped == []
        assert sorted(fleet) == ["cam-a", "cam-c"] and sorted(workers.live()) == ["cam-a", "cam-c"]
        assert [c.id for c in lane.cameras] == ["cam-c", "cam-a"]
    asyncio.run(main())
