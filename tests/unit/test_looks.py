"""Looks (pipeline.s5_looks): the colour histogram of a box that the tracker uses where motion
cannot decide, read from decoded H.264 pictures (PyAV's planes in place), NV12 and RGB alike."""
import av
import numpy as np
import pytest

from pipeline.s5_looks import LOOK_BINS, looks, similarity
from scripts.lab.occluder_scenes import OccluderScene


SCENE = dict(seed=41, width=640, height=360, miss=0.0)
FIRST = 150  # frames FIRST.. of the 15 s scene: most of its objects in view


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Six pictures of an occlusion scene encoded to H.264 and decoded again (PyAV), and their truth."""
    scene = OccluderScene(**SCENE)
    rendered = [scene.render(FIRST + i) for i in range(6)]
    clip = tmp_path_factory.mktemp("looks") / "occ.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for img, _ in rendered:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(clip)) as container:
        pictures = [frame for frame in container.decode(video=0)]
    return pictures, [truth for _, truth in rendered]


def _look(picture, box) -> np.ndarray:
    return looks([picture], np.array([box], np.float64), np.zeros(1, np.int64))[0]


def test_an_object_looks_like_itself_in_another_frame_and_unlike_other_objects(decoded):
    pictures, truth = decoded
    assert pictures[0].format.name == "yuv420p"
    first = {t.object_id: _look(pictures[0], t.bbox) for t in truth[0] if t.visible == 1.0}
    later = {t.object_id: _look(pictures[5], t.bbox) for t in truth[5] if t.visible == 1.0}
    common = sorted(set(first) & set(later))
    assert len(common) >= 3, common
    for k in common:
        assert abs(first[k].sum() - 1) < 1e-9 and first[k].shape == (LOOK_BINS,)
        assert similarity(first[k], later[k]) >= 0.85, k
    scene = OccluderScene(**SCENE)
    unlike = [(a, b) for a in common for b in common if a < b
              and np.abs(np.subtract(scene.things[a].color, scene.things[b].color)).max() > 100]
    assert unlike
    for a, b in unlike:  # objects of clearly other colours
        assert similarity(first[a], later[b]) < 0.5, (a, b)


def test_nv12_and_rgb_pictures_give_the_looks_of_the_decoders_yuv420p(decoded):
    pictures, truth = decoded
    boxes = np.array([t.bbox for t in truth[2]], np.float64)
    owner = np.zeros(len(boxes), np.int64)
    base = looks([pictures[2]], boxes, owner)
    nv12 = looks([pictures[2].reformat(format="nv12")], boxes, owner)
    rgb = looks([pictures[2].to_ndarray(format="rgb24")], boxes, owner)
    assert np.allclose(base, nv12)  # the same samples, interleaved chroma
    assert (similarity(base, rgb) >= 0.9).all()  # RGB converted back to YUV: rounding only


def test_a_picture_the_host_cannot_read_gives_no_look_and_others_in_the_batch_still_do(decoded):
    pictures, truth = decoded
    boxes = np.array([t.bbox for t in truth[1]] * 2, np.float64)
    owner = np.repeat([0, 1], len(truth[1]))
    out = looks([object(), pictures[1]], boxes, owner)  # e.g. the GPU path's DeviceFrame
    assert np.isnan(out[owner == 0]).all() and not np.isnan(out[owner == 1]).any()
    assert looks([pictures[1]], np.zeros((0, 4)), np.zeros(0, np.int64)).shape == (0, LOOK_BINS)
