"""Where training metrics and samples go: WORKDIR/metrics.jsonl and TensorBoard event files.

Only process 0 writes (`enabled=False` elsewhere): every process computes the same replicated metrics.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import PIL.Image


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, metrics_path: str, tensorboard_dir: str, enabled: bool = True):
        self.enabled = enabled
        self._file = self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter
            self._file = open(metrics_path, "a")
            self._writer = SummaryWriter(tensorboard_dir, flush_secs=30)

    def write(self, step: int, values: dict) -> None:
        """values: {name: float}; the line gets "step" first. Flushed, so a kill loses at most this line."""
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": int(step), **{k: _plain(v) for k, v in values.items()}}) + "\n")
        self._file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self._writer.add_scalar(name, float(value), int(step))

    def write_video(self, step: int, tag: str, gif_path: str) -> None:
        """Puts an animated GIF already written to disk into TensorBoard (its image plugin plays GIFs)."""
        if not self.enabled:
            return
        from tensorboardX.proto.summary_pb2 import Summary
        with open(gif_path, "rb") as f:
            data = f.read()
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
        self._writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._writer.close()


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def read_metrics(workdir_metrics: str) -> list[dict]:
    """The logged lines of a metrics.jsonl, in order (tests, tools)."""
    if not os.path.isfile(workdir_metrics):
        return []
    with open(workdir_metrics) as f:
        return [json.loads(line) for line in f if line.strip()]
