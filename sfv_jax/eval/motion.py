"""The motion report for the built-in synthetic data (sfv_jax/data/synthetic.py), where I3D features say little.

Synthetic clips are discs and squares of one flat colour each (one channel >= 160) gliding at constant velocity
over a dark gradient (every channel <= 127), drawn without antialiasing. A generator that learned the data keeps
each shape's colour and size and moves it in a straight line at constant speed. Per clip:

1. foreground = pixels whose brightest channel is >= `foreground` (144, between the two ranges);
2. the shapes' colours = clusters of the first frame's foreground colours (the most common colour, everything
   within `colour_radius` of it, repeat), each covering at least `min_area` of the frame (the data's smallest
   shape covers ~3%; a smaller cluster is a decoder's blend of a shape's edge with what lies behind it, and
   counting it as a shape would mark the real one as touching another in every frame), less halos (drop_halos);
   clusters of near colours that share a foreground region in every frame are parts of one shape (group_parts);
3. in every frame, each foreground pixel belongs to the nearest shape colour within `colour_radius`: a shape's
   area, centroid and mean colour per frame;
4. frames where a shape touches another one (comes within 2 px of it; one may hide part of the other: the data
   draws them on top of each other) do not count for its size and position; a shape clear of the others in fewer
   than half the frames (or 3) is not judged, and a clip with no judged shape is counted apart
   (`clips_not_judged`), not as a pass;
5. per judged shape: keeps its colour (seen in >= 75% of frames, median colour drift <= `colour_tol`), keeps its size
   (median |area / median area - 1| <= `size_tol`), constant velocity (least-squares line through its centroids,
   median distance to it <= `centroid_tol` pixels).

A judged clip passes when every judged shape passes all three; the shares are over judged clips. Speeds (pixels
per frame, from the fitted lines) of all shapes form a distribution; against a real set it is compared with the
1-D Wasserstein distance.
`motion_report(fake, real)` returns everything as a dict (for scripts and the toy-scale SF-V evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from sfv_jax.errors import SfvError


@dataclasses.dataclass(frozen=True)
class Tolerances:
    foreground: int = 144
    colour_radius: float = 48.0
    min_area: float = 0.01  # of the frame's pixels (41 at 64x64), at least 3 pixels
    colour_tol: float = 24.0
    size_tol: float = 0.25
    centroid_tol: float = 1.0
    min_present: float = 0.75
    min_clear: float = 0.5
    max_shapes: int = 8


@dataclasses.dataclass
class ShapeTrack:
    """One tracked shape: its first-frame colour, and per-frame area, centroid (x, y), mean colour."""

    colour: np.ndarray  # (3,)
    area: np.ndarray  # (T,) pixels, 0 where not found
    centroid: np.ndarray  # (T, 2), NaN where not found
    mean_colour: np.ndarray  # (T, 3), NaN where not found
    touching: np.ndarray  # (T,) bool: the shape touches another shape's pixels (possibly occluded)

    def clear_frames(self) -> np.ndarray:
        """Indices of the frames where the shape is seen and touches no other shape."""
        return np.flatnonzero((self.area > 0) & ~self.touching)

    def fit(self):
        """(velocity (2,) px/frame, median centroid error px) of the least-squares constant-velocity line."""
        t = self.clear_frames()
        if len(t) < 2:
            return np.full(2, np.nan), np.inf
        design = np.stack([np.ones(len(t)), t], axis=1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, self.centroid[t], rcond=None)
        errors = np.linalg.norm(design @ coef - self.centroid[t], axis=1)
        return coef[1], float(np.median(errors))


def shape_colours(frame: np.ndarray, tol: Tolerances) -> list[np.ndarray]:
    """Colours (3,) float of the shapes in one uint8 frame (H, W, 3), most pixels first."""
    pixels = frame[frame.max(axis=-1) >= tol.foreground].astype(np.float64)
    min_pixels = max(3, int(np.ceil(tol.min_area * frame.shape[0] * frame.shape[1])))
    colours = []
    while len(pixels) >= min_pixels and len(colours) < tol.max_shapes:
        bins = (pixels // 32).astype(np.int64) @ np.array([64, 8, 1])
        centre = np.median(pixels[bins == np.bincount(bins).argmax()], axis=0)
        near = np.linalg.norm(pixels - centre, axis=1) <= tol.colour_radius
        if near.sum() >= min_pixels:
            colours.append(np.median(pixels[near], axis=0))
        pixels = pixels[~near]
    return colours


def label_frame(frame: np.ndarray, palette: np.ndarray, tol: Tolerances) -> np.ndarray:
    """(H, W) int: each foreground pixel's nearest palette colour within `colour_radius`, else -1."""
    labels = np.full(frame.shape[:2], -1)
    ys, xs = np.nonzero(frame.max(axis=-1) >= tol.foreground)
    if len(palette) and len(ys):
        distance = np.linalg.norm(frame[ys, xs].astype(np.float64)[:, None, :] - palette[None], axis=-1)  # (n, K)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(ys)), nearest] <= tol.colour_radius
        labels[ys[close], xs[close]] = nearest[close]
    return labels


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """The pixels with an 8-neighbour in `mask` (H, W) bool."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if dy or dx], axis=0)


def drop_halos(frame: np.ndarray, colours: list[np.ndarray], tol: Tolerances) -> list[np.ndarray]:
    """The colours less those of halos: clusters most of whose pixels border a larger cluster. A soft-edged
    (decoded) shape has a rim of its colour blended with the background, bright enough to be foreground and far
    enough in colour to cluster apart; counted as a shape, it would touch the real one in every frame. A real
    shape bordering a larger one (occluded) borders it along an edge only, not with most of its pixels."""
    if len(colours) < 2:
        return colours
    labels = label_frame(frame, np.stack(colours), tol)
    areas = np.array([(labels == k).sum() for k in range(len(colours))])
    keep = []
    for k, colour in enumerate(colours):
        mine = labels == k
        larger = np.isin(labels, np.flatnonzero(areas > areas[k]))
        if not mine.any() or (mine & _neighbours(larger)).sum() <= 0.5 * mine.sum():
            keep.append(colour)
    return keep


def group_parts(labels: list[np.ndarray], colours: list[np.ndarray], tol: Tolerances) -> np.ndarray:
    """(K,) the object each colour cluster belongs to: two clusters are parts of one object when their colours are
    within 2 colour_radius and, in every frame showing both (at least half the frames, and 3), they lie in one
    8-connected foreground region. A generated shape may shade from one colour to a near one, which clusters as
    two parts; they move together. The data's shapes are flat, and two of them overlap in every frame only when
    they move alike, which a random draw of two velocities rarely gives."""
    from scipy import ndimage
    parent = list(range(len(colours)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    regions = [ndimage.label(frame >= 0, structure=np.ones((3, 3)))[0] for frame in labels]
    needed = max(3, int(np.ceil(tol.min_clear * len(labels))))
    for i in range(len(colours)):
        for j in range(i + 1, len(colours)):
            if np.linalg.norm(colours[i] - colours[j]) > 2 * tol.colour_radius:
                continue
            both = [(np.unique(r[f == i]), np.unique(r[f == j])) for f, r in zip(labels, regions)
                    if (f == i).any() and (f == j).any()]
            if len(both) >= needed and all(np.intersect1d(a, b).size for a, b in both):
                parent[root(j)] = root(i)
    roots = [root(i) for i in range(len(colours))]
    return np.unique(roots, return_inverse=True)[1]


def track_shapes(clip: np.ndarray, tol: Tolerances = Tolerances()) -> list[ShapeTrack]:
    """Tracks the shapes of the first frame through uint8 clip (T, H, W, 3) by colour (a shape may be several
    colour clusters that move together: group_parts)."""
    colours = drop_halos(clip[0], shape_colours(clip[0], tol), tol)
    if not colours:
        return []
    cluster_labels = [label_frame(frame, np.stack(colours), tol) for frame in clip]
    group = np.append(group_parts(cluster_labels, colours, tol), -1)  # index -1 (no cluster) stays -1
    labels = [group[frame] for frame in cluster_labels]
    t_len = clip.shape[0]
    tracks = []
    for k in range(group.max() + 1):
        parts = np.flatnonzero(group[:-1] == k)
        # One cluster keeps its own colour; an object of several parts, the mean of its first-frame pixels.
        colour = colours[parts[0]] if len(parts) == 1 else clip[0][labels[0] == k].astype(np.float64).mean(axis=0)
        tracks.append(ShapeTrack(colour, np.zeros(t_len), np.full((t_len, 2), np.nan), np.full((t_len, 3), np.nan),
                                 np.zeros(t_len, bool)))
    for t, (frame, frame_labels) in enumerate(zip(clip, labels)):
        for k, track in enumerate(tracks):
            mine = frame_labels == k
            if mine.any():
                ys, xs = np.nonzero(mine)
                track.area[t] = len(ys)
                track.centroid[t] = xs.mean(), ys.mean()
                track.mean_colour[t] = frame[ys, xs].astype(np.float64).mean(axis=0)
                track.touching[t] = _touches_other(frame_labels, k)
    return tracks


def _touches_other(labels: np.ndarray, k: int) -> bool:
    """Whether a pixel labelled k lies within 2 pixels (8-connected steps) of one labelled with another shape
    (labels (H, W), -1 = none): where a decoded shape meets another, their colours blend into pixels neither
    claims, so touching shapes are a pixel or two apart."""
    return bool(np.any(_neighbours(_neighbours(labels == k)) & (labels >= 0) & (labels != k)))


def judge_shape(track: ShapeTrack, tol: Tolerances) -> dict | None:
    """The three checks (colour, size, constant velocity) of one track, its speed and centroid error; None for
    a shape too often in contact with others to be judged."""
    present = track.area > 0
    if len(track.clear_frames()) < max(3, np.ceil(tol.min_clear * len(track.area))):
        return None
    velocity, error = track.fit()
    if present.mean() < tol.min_present:
        return {"colour": False, "size": False, "velocity": False, "speed": float(np.linalg.norm(velocity)),
                "centroid_error": error}
    drift = np.linalg.norm(track.mean_colour[present] - track.colour, axis=1)
    area = track.area[track.clear_frames()]
    return {"colour": bool(np.median(drift) <= tol.colour_tol),
            "size": bool(np.median(np.abs(area / np.median(area) - 1)) <= tol.size_tol),
            "velocity": bool(error <= tol.centroid_tol),
            "speed": float(np.linalg.norm(velocity)), "centroid_error": error}


def _set_report(clips: Iterable[np.ndarray], tol: Tolerances) -> tuple[dict, np.ndarray]:
    counts = dict(clips=0, coherent=0, colour=0, size=0, velocity=0, shapes=0, no_shape=0, not_judged=0)
    speeds, errors = [], []
    for clip in clips:
        clip = np.asarray(clip)
        if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] < 3:
            raise SfvError(f"the motion report takes uint8 clips (T >= 3, H, W, 3), got {clip.dtype} {clip.shape}")
        tracks = track_shapes(clip, tol)
        verdicts = [v for v in (judge_shape(track, tol) for track in tracks) if v is not None]
        counts["clips"] += 1
        counts["shapes"] += len(tracks)
        counts["no_shape"] += not tracks
        counts["not_judged"] += bool(tracks) and not verdicts
        for check in ("colour", "size", "velocity"):
            counts[check] += bool(verdicts) and all(v[check] for v in verdicts)
        counts["coherent"] += bool(verdicts) and all(v["colour"] and v["size"] and v["velocity"] for v in verdicts)
        speeds += [v["speed"] for v in verdicts if np.isfinite(v["speed"])]
        errors += [v["centroid_error"] for v in verdicts]
    # Judged clips: a clip with no shape at all fails (the generator lost them); one whose shapes all overlap
    # too much is left out.
    n = max(counts["clips"] - counts["not_judged"], 1)
    speeds = np.asarray(speeds)
    report = {"num_clips": counts["clips"], "num_shapes": counts["shapes"], "clips_without_shapes": counts["no_shape"],
              "clips_not_judged": counts["not_judged"],
              "coherent_share": counts["coherent"] / n, "keeps_colour_share": counts["colour"] / n,
              "keeps_size_share": counts["size"] / n, "constant_velocity_share": counts["velocity"] / n,
              "median_centroid_error_px": float(np.median(errors)) if errors else None,
              "speed_px_per_frame": _quantiles(speeds)}
    return report, speeds


def _quantiles(values: np.ndarray) -> dict | None:
    if not len(values):
        return None
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"mean": float(values.mean()), "p10": float(p10), "median": float(p50), "p90": float(p90)}


def motion_report(fake: Iterable[np.ndarray], real: Iterable[np.ndarray] | None = None,
                  tolerances: Tolerances = Tolerances()) -> dict:
    """The motion report of `fake` (an iterable of uint8 clips (T, H, W, 3), or an array (N, T, H, W, 3)),
    and, with `real`, the real set's report and the Wasserstein distance between the two speed distributions.

    Keys: num_clips, num_shapes, clips_without_shapes, clips_not_judged, coherent_share (judged clips whose
    every judged shape keeps colour, size and constant velocity), keeps_colour_share, keeps_size_share,
    constant_velocity_share, median_centroid_error_px, speed_px_per_frame {mean, p10, median, p90},
    tolerances; with real: "real" (the same keys) and speed_wasserstein_px_per_frame.
    """
    report, fake_speeds = _set_report(fake, tolerances)
    report["tolerances"] = dataclasses.asdict(tolerances)
    if real is not None:
        from scipy.stats import wasserstein_distance

        report["real"], real_speeds = _set_report(real, tolerances)
        both = len(fake_speeds) and len(real_speeds)
        report["speed_wasserstein_px_per_frame"] = (float(wasserstein_distance(fake_speeds, real_speeds))
                                                    if both else None)
    return report
