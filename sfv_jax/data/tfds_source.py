"""A prepared TensorFlow Datasets video dataset (e.g. ucf101), read by index from its array_record files.

tensorflow and tensorflow-datasets are imported here only, and only when data.source='tfds': they are the
optional extra `sfv-jax[data]`, so users who only sample never install them. Random access (array_record)
lets each process fetch exactly its own rows; only the frames a clip uses are decoded (PNG/JPEG per frame).
Nothing is downloaded here: a training run that starts a multi-GB download on every host is a bad surprise,
so an unprepared dataset is an error that says how to build it once.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np

from sfv_jax.data.clips import DataError, frame_indices, frame_step, resize_center_crop

VIDEO_KEY = "video"  # ucf101's name for the uint8 (T, H, W, 3) frames; other TFDS video sets use it too


def _import_tfds():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banners are noise in a train log
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError("data.source='tfds' needs tensorflow-datasets and tensorflow, which are not installed; "
                        "run pip install 'sfv-jax[data]' (or use data.source='folder')") from error
    # A GPU build of TensorFlow would otherwise reserve accelerator memory that JAX needs; it only reads files.
    tf.config.set_visible_devices([], "GPU")
    return tfds


class TfdsVideos:
    """Examples of TFDS dataset `name` (split `split`); clip(i, rng) -> uint8 (num_frames, height, width, 3).

    source_fps: the dataset's frame rate, which TFDS does not record (ucf101: 25); with `fps` it sets the
    frame step. None takes consecutive frames.
    """

    skipped = 0  # TFDS examples were validated when the dataset was built

    def __init__(self, name: str, num_frames: int, height: int, width: int, split: str = "train",
                 data_dir: str | None = None, fps: float | None = 7, source_fps: float | None = None):
        tfds = _import_tfds()
        where = f" in data.tfds_data_dir={data_dir}" if data_dir else " in the default TFDS data_dir"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise DataError(f"data.tfds_name={name!r} is not a TFDS dataset{where}; check the name against "
                            f"tfds.list_builders(), or set data.tfds_data_dir to the folder that holds it") from error
        if not builder.is_prepared():
            raise DataError(f"TFDS dataset {name!r} is not prepared{where} ({builder.data_dir}); build it once "
                            f"with python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
                            f"data_dir='DIR', file_format='array_record').download_and_prepare()\" and set "
                            f"data.tfds_data_dir=DIR")
        features = builder.info.features
        if VIDEO_KEY not in features.keys():
            raise DataError(f"TFDS dataset {name!r} has no {VIDEO_KEY!r} feature (it has: "
                            f"{', '.join(sorted(features.keys()))}); choose a video dataset for data.tfds_name")
        try:
            self._num = int(builder.info.splits[split].num_examples)
        except (KeyError, ValueError, AssertionError) as error:
            raise DataError(f"data.tfds_split={split!r} is not a split of TFDS dataset {name!r} (splits: "
                            f"{', '.join(sorted(builder.info.splits.keys()))}); e.g. 'train' or 'train[:90%]'") from error
        if self._num < 1:
            raise DataError(f"TFDS dataset {name!r} split {split!r} is empty; choose another data.tfds_split")
        try:
            self._records = builder.as_data_source(
                split, deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE)
        except NotImplementedError as error:
            raise DataError(
                f"TFDS dataset {name!r}{where} is stored as {builder.info.file_format.value}, which cannot be read "
                f"by index; copy it once to array_record with `python tools/build_tfds_videos.py --tfds {name} "
                f"{'--tfds-data-dir ' + str(data_dir) + ' ' if data_dir else ''}--data-dir NEW_DIR` and set "
                f"data.tfds_data_dir=NEW_DIR"
            ) from error
        self._builder, self._split = builder, split
        self._decoded = None  # a fully decoding data source, only made for videos not stored as image bytes
        self._lock = threading.Lock()
        self.name, self.num_frames, self.height, self.width = name, num_frames, height, width
        self._step = frame_step(source_fps, fps)

    def __len__(self) -> int:
        return self._num

    def frames(self, index: int, rng: np.random.Generator) -> list[np.ndarray]:
        """The clip's frames at source size, decoding only the frames it uses."""
        example = self._records[index]
        encoded = list(example.features.feature[VIDEO_KEY].bytes_list.value)
        if encoded:  # tfds.features.Video stores one PNG/JPEG per frame
            from PIL import Image

            picks = frame_indices(len(encoded), self.num_frames, self._step, rng)
            return [np.asarray(Image.open(io.BytesIO(encoded[i])).convert("RGB")) for i in picks]
        with self._lock:
            if self._decoded is None:
                self._decoded = self._builder.as_data_source(self._split)
        video = np.asarray(self._decoded[index][VIDEO_KEY])
        picks = frame_indices(len(video), self.num_frames, self._step, rng)
        return [np.repeat(video[i], 3, axis=-1) if video.shape[-1] == 1 else video[i] for i in picks]

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Example `index` -> uint8 (num_frames, height, width, 3); rng picks the start frame."""
        return np.stack([resize_center_crop(f, self.height, self.width) for f in self.frames(index, rng)])
