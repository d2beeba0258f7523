"""Placement under concurrency (issue 33), member by member: the daemon's own group member
(pipeline.placement.group) driven through a group coordinator played in-process (FakeGroup), so
each test decides exactly when a rebalance happens, whether a rejoin request is heard, and how long
applying an assignment takes. One test per finding of the review; each fails with the mechanism
it checks removed (see the note in each)."""
import asyncio
import json

import pytest

from pipeline.placement import group as group_module
from pipeline.placement.plan import MemberReport, camera_list_digest, decode_assignment, plan
from tests.unit.placement_fakes import FakeGroup, SimpleNode, eventually

pytestmark = pytest.mark.timeout(60)
CAMS = {f"cam-{i}": 1.0 for i in range(4)}


def run(coro):
    return asyncio.run(coro)


async def stop_all(*members):
    for member in members:
        await member.stop()


def test_a_camera_is_claimed_the_moment_its_assignment_arrives_so_no_plan_gives_it_to_a_second_node():
    """Finding 3: a node's report lagged its assignment (cameras were reported only once started),
    so a rebalance during the start gave the camera to a second node. Fails when `arrive` does not
    claim (the report then omits cam-4 and node-b is given it while node-a starts it)."""
    async def main():
        group = FakeGroup()
        a, b = SimpleNode("node-a", CAMS), SimpleNode("node-b", CAMS)
        ma = a.member(group)
        await ma.start()
        await eventually(lambda: a.running == set(CAMS), what="node-a running every camera")
        for node in (a, b):
            node.costs["cam-4"] = 1.0  # a camera added on every node (a reload)
        a.hold = asyncio.Event()  # node-a's next start takes a while
        await group.rebalance()  # cam-4 goes to node-a, which starts it...
        assert "cam-4" in ma.report().running and "cam-4" not in a.running  # claimed while starting
        mb = b.member(group)
        await mb.start()  # ...and node-b joins meanwhile
        assert "cam-4" not in b.running, "cam-4 given to node-b while node-a was starting it"
        a.hold.set()
        await eventually(lambda: not ma.view.moving and a.running | b.running == set(a.costs)
                         and not a.running & b.running, what="the group settled")
        await stop_all(ma, mb)
    run(main())


def test_a_moves_second_round_is_asked_for_again_until_it_happened(monkeypatch):
    """Finding 2: the node that gave cameras up asked once for the second round; a lost request
    (aiokafka replaces its rejoin future during a rebalance) left them moving, on no node, for
    good. Fails when `_ask_round_two` asks only once (force only)."""
    monkeypatch.setattr(group_module, "ROUND_TWO_ASK_S", 0.2)

    async def main():
        group = FakeGroup(hear_rejoins=False)  # every rejoin request is lost
        a, b = SimpleNode("node-a", CAMS), SimpleNode("node-b", CAMS)
        ma, mb = a.member(group), b.member(group)
        await ma.start()
        await eventually(lambda: a.running == set(CAMS))
        await mb.start()  # the spread moves two cameras: taken from node-a this round
        await eventually(lambda: len(a.running) == 2 and ma.view.moving, what="round one")
        assert set(ma.view.moving_since) == set(ma.view.moving)  # the gauge's source
        await eventually(lambda: group.rejoin_requests >= 3, what="node-a asking again")
        assert len(b.running) == 0 and ma.view.moving  # still on their way: the requests were lost
        group.hear_rejoins = True  # the next request is heard
        await eventually(lambda: len(b.running) == 2 and not ma.view.moving, what="round two")
        asked = group.rejoin_requests
        await asyncio.sleep(0.6)
        assert group.rejoin_requests == asked, "asked again after the move happened"
        assert "round_two_ask" in a.events
        await stop_all(ma, mb)
    run(main())


def test_only_the_newest_assignment_is_applied_and_a_failure_while_applying_is_survived():
    """Finding 1 at the member (the runtime test covers the camera owner) and the 'failure inside
    the assignment callback' rule: assignments that arrive while one is applied wait, only the
    newest is applied, and an apply that raises is logged, counted and followed by the next."""
    async def main():
        group = FakeGroup()
        a = SimpleNode("node-a", CAMS)
        ma = a.member(group)
        await ma.start()
        await eventually(lambda: a.applied)
        a.hold = asyncio.Event()
        for _ in range(3):
            await group.rebalance()
        a.hold.set()
        await eventually(lambda: len(a.applied) >= 2)
        await asyncio.sleep(0.1)
        assert a.applied == [1, 2, 4], a.applied  # 2 was under way; 3 was replaced by 4 before it began

        async def broken(assignment, cameras):
            raise RuntimeError("a bug while starting cameras")
        ma._apply = broken
        await group.rebalance()
        await eventually(lambda: "apply" in a.events, what="the failure counted")
        ma._apply = a.apply
        await group.rebalance()
        await eventually(lambda: a.applied[-1] == 6, what="the next assignment applied")
        await stop_all(ma)
    run(main())


def test_nodes_with_other_camera_lists_are_flagged_and_cameras_a_node_cannot_run_go_elsewhere():
    """Finding 4: a follower dropped assigned cameras it did not know (or had no lane for) in
    silence, and nobody saw that the lists differed. Now each report has a digest of the node's
    list, the leader names the nodes whose list differs, and refused cameras are planned
    elsewhere. Fails without `refused` in the plan (cam-4 keeps going to node-b, which cannot run
    it) or without the digest (lists_differ stays empty)."""
    async def main():
        group = FakeGroup()
        a = SimpleNode("node-a", {**CAMS, "cam-4": 1.0})  # the leader knows cam-4 ...
        b = SimpleNode("node-b", CAMS)  # ... node-b has not been reloaded yet
        ma, mb = a.member(group), b.member(group)
        await ma.start()
        await mb.start()
        await eventually(lambda: "cam-4" in a.running and a.running | b.running == set(a.costs)
                         and not a.running & b.running, what="cam-4 run by the node that knows it")
        assert "cam-4" not in b.running and ma.view.lists_differ == ["node-b"] == mb.view.lists_differ
        b.costs["cam-4"] = 1.0  # node-b reloaded: the lists agree again
        await group.rebalance()
        await eventually(lambda: not ma.view.lists_differ and not mb.view.lists_differ)
        b.no_lane = {"cam-1"}  # a camera node-b cannot run here (its GPU or model has no lane)
        b.costs["cam-5"] = a.costs["cam-5"] = 1.0
        await group.rebalance()
        await eventually(lambda: a.running | b.running == set(a.costs) and "cam-1" not in b.running
                         and not ma.view.moving, what="cam-1 planned elsewhere")
        await stop_all(ma, mb)
    run(main())


def test_a_member_the_leader_cannot_read_freezes_placement_and_nothing_runs_twice():
    """Finding 6: an unreadable report was read as 'capacity 0, running nothing', so its cameras
    were given to others while it ran them. Now the plan is frozen: every readable member keeps
    what it runs, nothing is placed or moved, and the plan names the member. Fails when
    MemberReport.decode returns a readable empty member for junk."""
    async def main():
        group = FakeGroup()
        a, b, c = (SimpleNode(n, CAMS) for n in ("node-a", "node-b", "node-c"))
        ma, mb = a.member(group), b.member(group)
        await ma.start()
        await mb.start()
        await eventually(lambda: a.running | b.running == set(CAMS) and not ma.view.moving)
        before = (set(a.running), set(b.running))
        mc = c.member(group)
        consumer_c = None
        group.auto = False
        task = asyncio.get_running_loop().create_task(mc.start())
        await task
        await eventually(lambda: len(group.consumers) == 3)
        consumer_c = group.consumers[-1]
        consumer_c.started = True
        group.unreadable = {consumer_c.member_id}  # a member of a wire format the leader does not know
        for node in (a, b):
            node.costs["cam-9"] = 1.0  # and a new camera
        await group.rebalance()
        assert (a.running, b.running) == before and not c.running  # nothing moved or placed
        assert ma.view.frozen == [consumer_c.member_id] and "cam-9" not in a.running | b.running
        await stop_all(ma, mb, mc)
    run(main())


def test_an_older_member_reads_what_the_leader_writes_during_a_rolling_upgrade():
    """Finding 6, the upgrade: the leader writes assignments in the lowest version any member
    speaks, so a version 1 member (which reads only "v": 1) is not left without an assignment."""
    v1 = json.dumps({"v": 1, "node": "old", "capacity": 10.0, "running": {"cam-0": 3}, "generation": 3,
                     "stopping": [], "in_transit": []}).encode()
    new = MemberReport("m-new", "new", 10.0, {"cam-1": 3}, 3, digest=camera_list_digest(CAMS))
    result = plan(CAMS, [MemberReport.decode("m-old", v1), new], camera_list_digest(CAMS))
    written = json.loads(result.for_member("m-old", 4))
    assert written["v"] == 1 and "cam-0" in written["cameras"]  # what a version 1 member accepts
    assert decode_assignment(result.for_member("m-new", 4))["cameras"][:1] == ["cam-1"]
    assert json.loads(plan(CAMS, [new], camera_list_digest(CAMS)).for_member("m-new", 4))["v"] == 2


def test_two_members_with_one_node_id_both_show_in_the_map():
    """Finding 10: the map was keyed by node id, so two members sharing one hid each other's cameras."""
    twins = [MemberReport("m1", "node-x", 10.0, {"cam-0": 1}, 1), MemberReport("m2", "node-x", 10.0, {"cam-1": 1}, 1)]
    nodes = plan({"cam-0": 1.0, "cam-1": 1.0}, twins).nodes
    assert sorted(cam for info in nodes.values() for cam in info["cameras"]) == ["cam-0", "cam-1"]
    assert sorted(nodes) == ["node-x (m1)", "node-x (m2)"]


def test_a_failure_inside_the_assignor_callbacks_is_survived_and_a_rejoin_without_a_coordinator_counted(monkeypatch):
    """Finding 10: an exception in on_assignment ended the membership while the cameras ran on,
    and request_rejoin did nothing, silently, without aiokafka's coordinator. Fails when the
    callbacks let the exception through (the rebalance then raises here)."""
    async def main():
        group = FakeGroup()
        a = SimpleNode("node-a", CAMS)
        ma = a.member(group)
        ma.request_rejoin()  # not joined yet: no coordinator
        assert a.events == ["rejoin"]
        await ma.start()
        await eventually(lambda: a.running == set(CAMS))
        decode = group_module.Assignment.decode
        monkeypatch.setattr(group_module.Assignment, "decode", lambda data, led: 1 / 0)  # a bug at arrival
        await group.rebalance()
        assert "assignment" in a.events
        costs = ma._costs
        ma._costs = lambda: 1 / 0  # and one while reporting and planning
        monkeypatch.setattr(group_module.Assignment, "decode", decode)
        await group.rebalance()
        assert "report" in a.events and "plan" in a.events
        ma._costs = costs
        applied = len(a.applied)
        await group.rebalance()
        await eventually(lambda: len(a.applied) > applied, what="the member still applying")
        await stop_all(ma)
    run(main())


def test_a_rebalance_that_never_finishes_is_a_stall_and_the_node_joins_again_as_a_new_member(monkeypatch):
    """The stall of issue 33: a rebalance began (members revoked) and never ended. After
    rebalance_timeout + session_timeout + a margin the member says so (counted, view) and joins
    again with a fresh consumer; its cameras keep running throughout. Fails without the
    watchdog in `_poll` (the member waits for ever)."""
    monkeypatch.setattr(group_module, "STALL_MARGIN_S", 0.5)

    async def main():
        group = FakeGroup()
        a = SimpleNode("node-a", CAMS)
        ma = a.member(group, session_timeout_s=1, heartbeat_s=0.3, rebalance_timeout_s=1)
        await ma.start()
        await eventually(lambda: a.running == set(CAMS))
        first = group.consumers[0]
        group.stalled = True
        await group.rebalance()  # begins, never ends
        await eventually(lambda: "stall" in a.events and first.stopped, timeout=10, what="the stall noticed")
        assert a.running == set(CAMS) and ma.view.stalls >= 1  # left the group; the cameras kept running
        group.stalled = False  # the fresh member's join goes through
        await eventually(lambda: ma.view.joined and group.consumers[-1] is not first, timeout=10,
                         what="joined again as a new member")
        assert a.running == set(CAMS)
        await stop_all(ma)
    run(main())


def test_assignments_that_arrive_once_stopping_are_ignored():
    async def main():
        group = FakeGroup()
        a = SimpleNode("node-a", CAMS)
        ma = a.member(group)
        await ma.start()
        await eventually(lambda: a.applied)
        a.hold = asyncio.Event()
        ma._closing = True  # what stop() sets first
        a.costs.pop("cam-0")
        group.consumers[0].assignor.on_assignment(
            type("A", (), {"user_data": plan(a.costs, [ma.report("x")]).for_member("x", 9)})())
        a.hold.set()
        await asyncio.sleep(0.1)
        assert a.applied == [1] and ma._claims.keys() == set(CAMS)
        await ma.stop()
    run(main())
