"""Feature statistics (mean, covariance) accumulated in float64 over batches, and the Frechet distance.

FVD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy.linalg.sqrtm, real part, S the unbiased
covariance (np.cov, ddof 1), as StyleGAN-V computes it. The statistics stream: a sum and a sum of outer
products of the features (shifted by the first batch's mean, which keeps float64 cancellation harmless), so
10,000 videos cost one (400, 400) matrix, never a (10000, 400) feature table.
"""

from __future__ import annotations

import warnings

import numpy as np

from sfv_jax.errors import SfvError


class StatsError(SfvError):
    """A statistics file is unreadable or was made under another protocol."""


class RankWarning(UserWarning):
    """Fewer videos than features: the covariance is rank-deficient and FVD is biased upwards."""


class FeatureStats:
    """Running mean and covariance of (n, D) feature batches; `add` them, then read `mean` and `cov`."""

    def __init__(self, dim: int):
        self.dim, self.count = int(dim), 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(self.dim, np.float64)
        self.outer = np.zeros((self.dim, self.dim), np.float64)

    def add(self, features: np.ndarray) -> None:
        """features (n, D): any float dtype, accumulated in float64."""
        x = np.asarray(features, np.float64).reshape(-1, self.dim)
        if not len(x):
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
        x = x - self.shift
        self.count += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    @property
    def mean(self) -> np.ndarray:
        self._need(1)
        return self.shift + self.sum / self.count

    @property
    def cov(self) -> np.ndarray:
        """(D, D) unbiased covariance, equal to np.cov(features, rowvar=False)."""
        self._need(2)
        centred = self.sum / self.count
        return (self.outer - self.count * np.outer(centred, centred)) / (self.count - 1)

    def _need(self, n: int) -> None:
        if self.count < n:
            raise StatsError(f"statistics need at least {n} videos, got {self.count}")


def covariance_rank(cov: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(cov))


def warn_if_rank_deficient(cov: np.ndarray, count: int, name: str) -> int:
    """Warns (RankWarning) when `cov` is not of full rank, stating its rank; returns the rank."""
    rank = covariance_rank(cov)
    if rank < cov.shape[0]:
        warnings.warn(f"{name}: the covariance of {count} videos has rank {rank} < {cov.shape[0]}; FVD needs more "
                      f"than {cov.shape[0]} videos for a full-rank covariance (results are biased and not "
                      f"comparable with papers, which use 2,048 or more)", RankWarning, stacklevel=2)
    return rank


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 sqrtm(cov1 cov2)), in float64; sqrtm's real part as StyleGAN-V."""
    import scipy.linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise StatsError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
    root = np.real(scipy.linalg.sqrtm(cov1 @ cov2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2.0 * root))


def save_stats(path: str, mean: np.ndarray, cov: np.ndarray, count: int, protocol: dict,
               clip_shape: tuple | None = None) -> None:
    """Writes (atomically) mean, cov, count, the protocol (a dict of str/int) and the clips' shape (T, H, W, 3)
    to an .npz file."""
    from sfv_jax.fileio import write_file_atomically

    if not path.endswith(".npz"):
        raise StatsError(f"{path}: statistics files end in .npz")
    shape = np.asarray([] if clip_shape is None else clip_shape, np.int64)
    fields = {f"protocol_{k}": np.asarray(str(v)) for k, v in protocol.items()}
    write_file_atomically(path, lambda tmp: np.savez(tmp, mean=mean, cov=cov, count=np.int64(count),
                                                     clip_shape=shape, **fields))


def load_stats(path: str, protocol: dict) -> tuple[np.ndarray, np.ndarray, int, tuple | None]:
    """(mean, cov, count, clip shape or None) from a save_stats file; StatsError if it is unreadable or was made
    under another protocol."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mean, cov, count = f["mean"], f["cov"], int(f["count"])
            clip_shape = tuple(int(d) for d in f["clip_shape"]) if "clip_shape" in f.files else ()
            saved = {k[len("protocol_"):]: str(f[k]) for k in f.files if k.startswith("protocol_")}
    except (OSError, KeyError, ValueError) as e:
        raise StatsError(f"{path}: not a statistics file written by sfv-jax eval fvd --stats ({e})") from None
    wanted = {k: str(v) for k, v in protocol.items()}
    if saved != wanted:
        diff = ", ".join(f"{k}: {saved.get(k)} here, {wanted.get(k)} asked" for k in sorted(set(saved) | set(wanted))
                         if saved.get(k) != wanted.get(k))
        raise StatsError(f"{path}: statistics made under another protocol ({diff}); delete it or pick another --stats")
    if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise StatsError(f"{path}: mean {mean.shape} and covariance {cov.shape} do not fit together")
    return mean, cov, count, clip_shape or None
