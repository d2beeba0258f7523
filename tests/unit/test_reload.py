"""What a reloaded config changes: cameras added, removed and changed; other sections reported."""
from pipeline.config import Config
from pipeline.reload import plan_reload

BASE = {"model": {"path": "m.onnx"}, "kafka": {"bootstrap_servers": "k:9092"}}


def config(cameras, **sections):
    return Config.model_validate({**BASE, **sections, "cameras": cameras})


def test_plan_sorts_cameras_into_added_removed_changed_and_leaves_the_rest():
    running = config([{"id": "a", "url": "rtsp://h/a", "fps": 5}, {"id": "b", "url": "rtsp://h/b"},
                      {"id": "c", "url": "rtsp://h/c"}])
    new = config([{"id": "a", "url": "rtsp://h/a", "fps": 5}, {"id": "c", "url": "rtsp://h/c2"},
                  {"id": "d", "url": "rtsp://h/d"}])
    plan = plan_reload(running, new)
    assert [c.id for c in plan.added] == ["d"] and plan.removed == ("b",)
    assert [(c.id, c.url) for c in plan.changed] == [("c", "rtsp://h/c2")]
    assert plan.needs_restart == () and not plan.empty


def test_changes_outside_the_camera_list_are_named_for_a_restart():
    running = config([{"id": "a", "url": "rtsp://h/a"}])
    new = config([{"id": "a", "url": "rtsp://h/a"}], batching={"max_batch": 2}, log_level="debug")
    plan = plan_reload(running, new)
    assert plan.empty and set(plan.needs_restart) == {"batching", "log_level"}
