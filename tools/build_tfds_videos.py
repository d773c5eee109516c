"""Build a local TFDS video dataset (ucf101-style 'video' feature, array_record) for data.source='tfds'.

From a folder of video files (every readable file, all its frames, resized + centre-cropped), from the
synthetic moving shapes (so the TFDS path can be tried without downloading anything), or as an array_record
copy of a TFDS dataset prepared as tfrecord (which has no random access; `tfds convert_format` does the same
but needs apache-beam):

    python tools/build_tfds_videos.py --data-dir /tmp/tfds --name my_videos --folder videos/ --height 64 --width 64
    python tools/build_tfds_videos.py --data-dir /tmp/tfds --name shapes --synthetic 32 --num-frames 16
    python tools/build_tfds_videos.py --data-dir /data/tfds_ar --tfds ucf101 --tfds-data-dir /data/tfds
    sfv-jax train --config configs/tiny_sfv.py --workdir w --config.data.source=tfds \
        --config.data.tfds_name=my_videos --config.data.tfds_data_dir=/tmp/tfds

Needs the optional extra: pip install 'sfv-jax[data]'.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from sfv_jax.data.folder import list_videos
from sfv_jax.data.sources import resize_center_crop
from sfv_jax.data.synthetic import SyntheticVideos


def folder_videos(root: str, height: int, width: int):
    """Yields uint8 (T, height, width, 3) for every readable video under root (unreadable ones are logged)."""
    for path in list_videos(root):
        try:
            frames = _all_frames(path)
        except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
            logging.warning("skipping unreadable video %s (%s)", path, error)
            continue
        yield np.stack([resize_center_crop(f, height, width) for f in frames])


def _all_frames(path: str) -> list[np.ndarray]:
    """Every frame of a video file, uint8 (h, w, 3)."""
    from sfv_jax.video_io import read_all_frames
    return read_all_frames(path)


def build(data_dir: str, name: str, videos, height: int, width: int, file_format: str = "array_record"):
    """Stores the uint8 (T, height, width, 3) videos as split 'train' of TFDS dataset `name` in data_dir."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({"video": tfds.features.Video(shape=(None, height, width, 3))})
    examples = ((i, {"video": v}) for i, v in enumerate(videos))
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets={"train": examples}, data_dir=data_dir,
        file_format=file_format)


def copy_as_array_record(name: str, source_data_dir: str | None, data_dir: str):
    """Copies every split of prepared TFDS dataset `name` (same config, version, features) as array_record."""
    import tensorflow_datasets as tfds

    source = tfds.builder(name, data_dir=source_data_dir)
    splits = {split: source.as_dataset(split=split, shuffle_files=False) for split in source.info.splits}
    # Same name, config and version, so tfds.builder(name, data_dir=data_dir) finds the copy.
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=str(source.version), features=source.info.features, split_datasets=splits,
        config=source.builder_config.name if source.builder_config else None, data_dir=data_dir,
        file_format="array_record")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--name", help="dataset name (data.tfds_name) for --folder and --synthetic")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="folder of video files (mp4, webm, avi, gif, mov, mkv)")
    source.add_argument("--synthetic", type=int, help="number of synthetic moving-shape videos")
    source.add_argument("--tfds", help="a prepared TFDS dataset to copy as array_record (keeps its name)")
    parser.add_argument("--tfds-data-dir", help="where --tfds is prepared (default: TFDS's)")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per synthetic video")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--file-format", default="array_record", choices=["array_record", "tfrecord"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tfds:
        builder = copy_as_array_record(args.tfds, args.tfds_data_dir, args.data_dir)
        print(f"{args.tfds}: {builder.info.splits} in {builder.data_dir}")
        return 0
    if not args.name:
        parser.error("--name is required with --folder and --synthetic")
    if args.folder:
        videos = folder_videos(args.folder, args.height, args.width)
    else:
        synthetic = SyntheticVideos(args.synthetic, args.num_frames, args.height, args.width)
        videos = (synthetic.video(i) for i in range(args.synthetic))
    builder = build(args.data_dir, args.name, videos, args.height, args.width, args.file_format)
    print(f"{args.name}: {builder.info.splits['train'].num_examples} videos in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
