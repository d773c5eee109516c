"""sfv_jax.data: synthetic motion, determinism, exact resume, process shards, video folders, TFDS, bad input."""

import importlib.util
import json
import logging
import os

import ml_collections
import numpy as np
import pytest

from sfv_jax.data import DataError, SyntheticVideos, make_clip_iterator
from sfv_jax.data.sources import frame_indices, resize_center_crop


def data_config(**overrides):
    fields = dict(source="synthetic", path=None, tfds_name=None, tfds_split="train", tfds_data_dir=None,
                  num_frames=3, height=16, width=24, fps=12, num_synthetic=5, num_workers=2)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def take(it, n):
    return [next(it)["frames"] for _ in range(n)]


def test_synthetic_shapes_move_at_their_declared_velocity():
    videos = SyntheticVideos(6, num_frames=5, height=40, width=56, seed=3)
    assert np.array_equal(videos.video(2), SyntheticVideos(6, 5, 40, 56, seed=3).video(2))
    assert not np.array_equal(videos.video(2), SyntheticVideos(6, 5, 40, 56, seed=4).video(2))
    moved = 0.0
    for index in range(len(videos)):
        frames = videos.video(index)
        assert frames.shape == (5, 40, 56, 3) and frames.dtype == np.uint8
        top = videos.motion(index)[-1]  # drawn last, so never occluded; backgrounds never share its colour
        for t in range(5):
            ys, xs = np.nonzero(np.all(frames[t] == top.colour, axis=-1))
            assert len(xs) > 0
            # Whole shape inside the frame, centroid where the declared motion puts it.
            np.testing.assert_allclose([xs.mean(), ys.mean()], top.centre(t), atol=0.5)
        moved += np.hypot(*top.velocity)
    assert moved > 1.0  # the clips do move


def test_frame_indices_and_resize_center_crop():
    rng = np.random.default_rng(0)
    starts = {int(frame_indices(20, 4, 3, rng)[0]) for _ in range(50)}
    assert min(starts) >= 0 and max(starts) <= 20 - 10 and len(starts) > 1
    assert list(frame_indices(5, 4, 2, rng)) == [0, 2, 4, 4]  # too short: the last frame holds
    ramp = np.broadcast_to(np.arange(80, dtype=np.uint8)[None, :, None] * 3, (40, 80, 3))
    out = resize_center_crop(ramp, 20, 20)  # scaled to (20, 40), then the middle 20 columns
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert abs(int(out[10, 0, 0]) - 3 * 20) <= 3 and abs(int(out[10, -1, 0]) - 3 * 58) <= 3


def test_iterator_is_deterministic_and_resumes_exactly_across_epochs():
    config = data_config()  # 5 clips, batches of 3: batches straddle epoch boundaries
    reference = take(make_clip_iterator(config, 3, seed=7), 6)
    assert all(b.shape == (3, 3, 16, 24, 3) and b.dtype == np.uint8 for b in reference)
    assert all(np.array_equal(a, b) for a, b in zip(reference, take(make_clip_iterator(config, 3, seed=7), 6)))
    other = take(make_clip_iterator(config, 3, seed=8), 6)
    assert not all(np.array_equal(a, b) for a, b in zip(reference, other))

    it = make_clip_iterator(config, 3, seed=7)
    take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    assert state["epoch"] == 1 and state["index"] == 1
    resumed = make_clip_iterator(config, 3, seed=7)
    resumed.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(reference[2:], take(resumed, 4)))

    # Each epoch is a permutation of the source, reshuffled per epoch.
    epochs = [[it.row_index(e * 5 + i)[1] for i in range(5)] for e in range(3)]
    assert all(sorted(order) == list(range(5)) for order in epochs) and len({tuple(o) for o in epochs}) > 1


def test_process_shards_concatenate_to_the_global_batch():
    config = data_config(num_synthetic=7)
    whole = take(make_clip_iterator(config, 4, seed=1), 3)
    shards = [take(make_clip_iterator(config, 4, seed=1, process_index=p, process_count=2), 3) for p in range(2)]
    for step in range(3):
        assert shards[0][step].shape[0] == 2
        assert np.array_equal(np.concatenate([shards[0][step], shards[1][step]]), whole[step])
    serial = take(make_clip_iterator(data_config(num_synthetic=7, num_workers=0), 4, seed=1), 3)
    assert all(np.array_equal(a, b) for a, b in zip(whole, serial))
    with pytest.raises(DataError, match="multiple of the process count"):
        make_clip_iterator(config, 3, seed=1, process_index=0, process_count=2)


def write_video(path, frames, fps):
    """frames (T, H, W, 3) uint8 -> path, through the same decoders' writers (ffmpeg; Pillow for GIF)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".gif"):
        from PIL import Image
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return
    import imageio.v2 as imageio
    codec = {"mp4": "libx264", "avi": "mpeg4"}[path.rsplit(".", 1)[1]]
    with imageio.get_writer(path, format="FFMPEG", fps=fps, codec=codec, macro_block_size=8, quality=9) as writer:
        for f in frames:
            writer.append_data(f)


def ramp_video(num_frames, colour, height=40, width=56):
    """Flat frames whose brightness rises by 8 per frame: frame k of the source is recognisable in a clip."""
    levels = 40 + 8 * np.arange(num_frames)
    return (levels[:, None, None, None] * np.asarray(colour)[None, None, None, :]).astype(np.uint8) \
        * np.ones((1, height, width, 1), np.uint8)


def test_folder_skips_a_corrupt_file_and_samples_clips_at_the_target_fps(tmp_path, caplog):
    root = tmp_path / "videos"
    write_video(str(root / "a.mp4"), ramp_video(16, (1, 0, 0)), fps=24)
    write_video(str(root / "sub" / "b.gif"), ramp_video(10, (0, 1, 0)), fps=24)
    write_video(str(root / "c.avi"), ramp_video(12, (0, 0, 1)), fps=24)
    (root / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "notes.txt").write_text("not a video")
    before = sorted(os.listdir(root))
    with caplog.at_level(logging.WARNING, logger="sfv_jax.data.folder"):
        it = make_clip_iterator(data_config(source="folder", path=str(root), num_frames=4, height=32, width=32),
                                4, seed=0)
        batches = take(it, 2)
    assert it.skipped == 1 and it.num_clips == 3
    resumed = make_clip_iterator(data_config(source="folder", path=str(root), num_frames=4, height=32, width=32),
                                 4, seed=0)
    resumed.set_state({"epoch": 1, "index": 1, "num_clips": 3, "seed": 0})  # after one batch of 4 from 3 clips
    assert np.array_equal(next(resumed)["frames"], batches[1])
    assert any("broken.mp4" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert sorted(os.listdir(root)) == before  # reading writes nothing
    for frames in batches:
        assert frames.shape == (4, 4, 32, 32, 3) and frames.dtype == np.uint8
        for clip in frames:
            level = clip.reshape(4, -1, 3).mean(axis=1).max(axis=1)  # the lit channel's mean per frame
            # 24 fps source at fps=12: every other source frame, brightness + 2 * 8 per clip frame.
            np.testing.assert_allclose(np.diff(level), 16, atol=3)


def test_bad_data_config_raises_one_line_data_errors(tmp_path):
    cases = [
        (data_config(source="folder", path=str(tmp_path / "nope")), "does not exist"),
        (data_config(source="folder", path=str(tmp_path / "empty")), "holds no video files"),
        (data_config(source="folder", path=None), "needs data.path"),
        (data_config(source="webdataset"), "unknown"),
        (data_config(num_synthetic=0), "num_synthetic"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_broken").mkdir()
    (tmp_path / "only_broken" / "x.webm").write_bytes(b"\x00" * 100)
    cases.append((data_config(source="folder", path=str(tmp_path / "only_broken")), "none of the 1 video files"))
    for config, expected in cases:
        with pytest.raises(DataError, match=expected) as info:
            make_clip_iterator(config, 2, seed=0)
        assert "\n" not in str(info.value) and ";" in str(info.value)  # one line: the problem; the fix
    assert sorted(os.listdir(tmp_path)) == ["empty", "only_broken"]
    assert os.listdir(tmp_path / "empty") == [] and os.listdir(tmp_path / "only_broken") == ["x.webm"]


def tfds_tool():
    """tools/build_tfds_videos.py as a module (tools/ is not a package)."""
    pytest.importorskip("tensorflow_datasets")
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "build_tfds_videos.py")
    spec = importlib.util.spec_from_file_location("build_tfds_videos", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tfds_dataset_reads_by_index_and_bad_names_fail_early(tmp_path):
    tool = tfds_tool()
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (6 + i, 24, 32, 3), dtype=np.uint8) for i in range(3)]
    tool.build(str(tmp_path / "tfrecord"), "tiny_videos", videos, 24, 32, file_format="tfrecord")
    config = data_config(source="tfds", tfds_name="tiny_videos", tfds_data_dir=str(tmp_path / "tfrecord"))
    with pytest.raises(DataError, match="cannot be read by index; copy it once"):
        make_clip_iterator(config, 2, seed=0)  # tfrecord has no random access: the error says how to copy it
    tool.copy_as_array_record("tiny_videos", str(tmp_path / "tfrecord"), str(tmp_path))
    config = data_config(source="tfds", tfds_name="tiny_videos", tfds_data_dir=str(tmp_path), num_frames=3,
                         height=24, width=32)
    it = make_clip_iterator(config, 2, seed=0)
    assert it.num_clips == 3 and it.skipped == 0
    frames = take(it, 2)
    for batch in frames:
        assert batch.shape == (2, 3, 24, 32, 3) and batch.dtype == np.uint8
        for clip in batch:
            # Same size, so no resampling: the clip is 3 consecutive frames of one video (PNG is lossless).
            matches = [(k, s) for k, v in enumerate(videos) for s in range(len(v) - 2)
                       if np.array_equal(v[s:s + 3], clip)]
            assert len(matches) == 1
    shard = make_clip_iterator(config, 2, seed=0, process_index=1, process_count=2)
    assert np.array_equal(take(shard, 2)[1][0], frames[1][1])

    with pytest.raises(DataError, match="not a TFDS dataset") as info:
        make_clip_iterator(data_config(source="tfds", tfds_name="no_such_videos", tfds_data_dir=str(tmp_path)), 2, 0)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="not a split"):
        make_clip_iterator(data_config(source="tfds", tfds_name="tiny_videos", tfds_split="validation",
                                       tfds_data_dir=str(tmp_path)), 2, 0)
