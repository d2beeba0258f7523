"""The placement leader's plan (pipeline/placement/plan.py), as pure functions over random groups: every
camera placed at most once, never past a node's capacity, unplaced only when it fits nowhere,
sticky (the same group moves nothing), proportional to capacity, a move in two rounds, and an
overlap after a partition resolved for the newer claim."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.placement.plan import MemberReport, Plan, decode_assignment, plan

cameras_st = st.dictionaries(st.from_regex(r"cam-[a-z0-9]{1,4}", fullmatch=True),
                             st.sampled_from([1.0, 2.0, 2.5, 5.0, 10.0, 12.5]), min_size=0, max_size=30)
capacities_st = st.lists(st.sampled_from([0.0, 5.0, 10.0, 20.0, 40.0, 80.0]), min_size=1, max_size=6)


def members(capacities, running=None):
    return [MemberReport(f"m{i}", f"node-{i}", c, (running or {}).get(f"m{i}", {})) for i, c in enumerate(capacities)]


def apply(result: Plan, group, generation):
    """What the members run after applying `result` (moving cameras stopped by their owners)."""
    return [MemberReport(m.member_id, m.node, m.capacity, {c: generation for c in result.assigned[m.member_id]},
                         generation, (), tuple(result.moving)) for m in group]


def loads(result: Plan, costs):
    return {m: sum(costs[c] for c in cams) for m, cams in result.assigned.items()}


@settings(max_examples=300, deadline=None)
@given(cameras_st, capacities_st)
def test_every_camera_is_placed_once_within_capacity_or_reported_unplaced(costs, capacities):
    group = members(capacities)
    result = plan(costs, group)
    placed = [c for cams in result.assigned.values() for c in cams]
    assert sorted(placed + result.unplaced + result.moving) == sorted(costs)  # once, or unplaced: never dropped
    for member in group:
        assert loads(result, costs)[member.member_id] <= member.capacity + 1e-9
    room = {m.member_id: m.capacity - loads(result, costs)[m.member_id] for m in group}
    for camera in result.unplaced:  # unplaced only when it fits nowhere
        assert all(costs[camera] > free + 1e-9 for free in room.values()), (camera, room)


@settings(max_examples=300, deadline=None)
@given(cameras_st, capacities_st)
def test_the_group_settles_and_then_moves_nothing(costs, capacities):
    group = members(capacities)
    result, generation = plan(costs, group), 1
    for _ in range(4):  # two rounds per move at most, then still
        group = apply(result, group, generation)
        generation += 1
        result = plan(costs, group)
        if not result.moving:
            break
    assert not result.moving
    again = plan(costs, apply(result, group, generation))
    assert again.assigned == result.assigned and not again.moving  # sticky: the same group moves nothing


def test_load_follows_capacity_a_node_with_twice_the_capacity_gets_about_twice_the_cost():
    costs = {f"cam-{i:02d}": cost for i, cost in enumerate([5.0, 2.5, 5.0, 10.0, 2.5, 5.0, 5.0, 2.5, 10.0, 5.0, 2.5, 5.0])}
    result = plan(costs, members([40.0, 40.0, 80.0]))
    got = loads(result, costs)
    assert got["m2"] / ((got["m0"] + got["m1"]) / 2) == pytest.approx(2.0, rel=0.35), got
    assert not result.unplaced


def test_a_camera_that_moves_is_first_taken_from_its_node_and_given_to_nobody():
    costs = {f"cam-{i}": 5.0 for i in range(6)}
    before = [MemberReport("a", "node-a", 100.0, {c: 3 for c in costs}, 3)]
    joined = [*before, MemberReport("b", "node-b", 100.0)]  # scale-out: a new node
    first = plan(costs, joined)
    assert first.moving and not first.assigned["b"]  # round 1: taken from a, not yet given to b
    assert set(first.assigned["a"]) | set(first.moving) == set(costs)
    second = plan(costs, [MemberReport("a", "node-a", 100.0, {c: 4 for c in first.assigned["a"]}, 4),
                          MemberReport("b", "node-b", 100.0, {}, 4)])
    assert sorted(second.assigned["b"]) == sorted(first.moving) and not second.moving  # round 2: given
    assert len(second.assigned["a"]) == len(second.assigned["b"]) == 3


def test_a_dead_nodes_cameras_go_to_the_others_at_once_and_theirs_stay_put():
    costs = {f"cam-{i}": 5.0 for i in range(6)}
    survivors = [MemberReport("a", "node-a", 100.0, {"cam-0": 5, "cam-1": 5, "cam-2": 5}, 5),
                 MemberReport("c", "node-c", 100.0, {"cam-3": 5}, 5)]  # node-b (cam-4, cam-5) is gone
    result = plan(costs, survivors)
    assert not result.moving and sorted(result.assigned["a"] + result.assigned["c"]) == sorted(costs)
    assert {"cam-0", "cam-1", "cam-2"} <= set(result.assigned["a"]) and "cam-3" in result.assigned["c"]


def test_after_a_partition_the_newer_claim_keeps_the_camera_and_the_other_gives_it_up():
    costs = {"cam-0": 5.0, "cam-1": 5.0}
    cut_off = MemberReport("a", "node-a", 100.0, {"cam-0": 3, "cam-1": 3}, 3)  # kept both while cut off
    took_over = MemberReport("b", "node-b", 100.0, {"cam-1": 6}, 6)  # the group gave cam-1 to b meanwhile
    result = plan(costs, [cut_off, took_over])
    assert "cam-1" in result.assigned["b"] and "cam-1" not in result.assigned["a"]
    assert result.overlaps == {"a": ["cam-1"]}


def test_beyond_the_groups_capacity_cameras_are_unplaced_and_placed_when_a_node_joins():
    costs = {f"cam-{i}": 10.0 for i in range(5)}
    alone = plan(costs, [MemberReport("a", "node-a", 30.0)])
    assert len(alone.unplaced) == 2 and len(alone.assigned["a"]) == 3
    running = MemberReport("a", "node-a", 30.0, {c: 1 for c in alone.assigned["a"]}, 1)
    joined = plan(costs, [running, MemberReport("b", "node-b", 30.0)])
    assert not joined.unplaced and len(joined.assigned["b"]) == 2  # the unplaced ones, without moving others


def test_the_wire_format_round_trips_and_junk_is_an_unreadable_member_that_freezes_the_plan():
    report = MemberReport("m", "node-1", 50.0, {"cam-1": 4}, 4, digest="abc", refused=("cam-7",))
    assert MemberReport.decode("m", report.encode()) == report
    junk = MemberReport.decode("x", b"\xff junk")
    assert not junk.readable and junk.capacity == 0.0
    assert not MemberReport.decode("y", b'{"node": "n", "capacity": 5}').readable  # no version: not ours
    result = plan({"cam-1": 5.0}, [report])
    assert decode_assignment(result.for_member("m", 5))["cameras"] == ["cam-1"]
    assert decode_assignment(b"not json") is None and decode_assignment(b'{"v": 99}') is None
    frozen = plan({"cam-1": 5.0, "cam-2": 5.0}, [report, junk])  # cam-2 might run on the unreadable member
    assert frozen.assigned == {"m": ["cam-1"], "x": []} and frozen.frozen == ["x"] and not frozen.unplaced


@settings(max_examples=200, deadline=None)
@given(cameras_st, capacities_st, st.data())
def test_a_camera_is_never_given_to_a_member_that_refused_it(costs, capacities, data):
    refused = {f"m{i}": tuple(c for c in sorted(costs) if data.draw(st.booleans(), label=f"m{i} {c}"))
               for i in range(len(capacities))}
    group = [MemberReport(f"m{i}", f"node-{i}", cap, refused=refused[f"m{i}"]) for i, cap in enumerate(capacities)]
    result = plan(costs, group)
    for member, cameras in result.assigned.items():
        assert not set(cameras) & set(refused[member])
    room = {m.member_id: m.capacity - loads(result, costs)[m.member_id] for m in group}
    for camera in result.unplaced:  # unplaced only where every member with room refused it
        assert all(camera in refused[m.member_id] or costs[camera] > room[m.member_id] + 1e-9 for m in group)


def test_a_camera_its_node_is_still_stopping_is_given_to_no_one():
    costs = {"cam-0": 5.0, "cam-1": 5.0}
    stopping = MemberReport("a", "node-a", 100.0, {"cam-0": 3}, 3, ("cam-1",))  # a rebalance came mid-stop
    result = plan(costs, [stopping, MemberReport("b", "node-b", 100.0, {}, 3)])
    assert "cam-1" in result.moving and all("cam-1" not in cams for cams in result.assigned.values())
    assert MemberReport.decode("a", stopping.encode()) == stopping


def test_a_join_whose_rounds_were_split_still_ends_balanced():
    """A member missed the generation that moved its cameras (Tansu completes a generation with
    whoever joined in time): the cameras in transit are placed and the spread still runs."""
    costs = {f"cam-{i:02d}": 1.0 for i in range(24)}
    b_cams = [f"cam-{i:02d}" for i in range(0, 24, 2)]
    c_cams = [f"cam-{i:02d}" for i in range(1, 24, 2)]
    moved = c_cams[:4] + b_cams[:4]
    members = [MemberReport("a", "node-a", 100.0, {}, 2, (), tuple(moved)),
               MemberReport("b", "node-b", 100.0, {c: 1 for c in b_cams}, 1),  # missed generation 2: still runs 12
               MemberReport("c", "node-c", 100.0, {c: 2 for c in c_cams[4:]}, 2, (), tuple(moved))]  # stopped its 4
    result, generation, group = plan(costs, members), 3, members
    for _ in range(4):
        group = apply(result, group, generation)
        generation += 1
        result = plan(costs, group)
        if not result.moving:
            break
    assert sorted(len(cams) for cams in result.assigned.values()) == [8, 8, 8]


@settings(max_examples=300, deadline=None)
@given(cameras_st, capacities_st, st.data())
def test_cameras_already_running_stay_only_where_they_fit(costs, capacities, data):
    """Whatever the members run now (a capacity lowered, two claims after a partition), the plan
    never leaves a node past its capacity."""
    owners = {c: data.draw(st.sampled_from([None, *range(len(capacities))]), label=c) for c in sorted(costs)}
    running = {f"m{i}": {c: data.draw(st.integers(1, 5)) for c, o in owners.items() if o == i}
               for i in range(len(capacities))}
    group = members(capacities, running)
    result = plan(costs, group)
    for member in group:
        assert loads(result, costs)[member.member_id] <= member.capacity + 1e-9
