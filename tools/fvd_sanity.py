"""I3D throughput on this machine, and an FVD sanity table on the built-in synthetic data.

FVD between two disjoint halves A, B of the synthetic videos (same distribution: small, up to the bias of
N/2 samples) against FVD between A and the same videos with their frames shuffled (same frames, no motion:
large if the metric sees motion). Prints markdown for BENCHMARKS.md.

    python tools/fvd_sanity.py --num-videos 96 --num-frames 16 --size 64
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from sfv_jax.data.synthetic import SyntheticVideos
from sfv_jax.eval.protocol import I3DFeatures
from sfv_jax.eval.stats import FeatureStats, RankWarning, frechet_distance


def stats_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stats = FeatureStats(features.shape[1])
    stats.add(features)
    return stats.mean, stats.cov


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=96, help="synthetic videos, split into halves A and B")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="synthetic frame size (resized to 224 for I3D)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = SyntheticVideos(args.num_videos, args.num_frames, args.size, args.size, seed=args.seed)
    videos = np.stack([source.video(i) for i in range(len(source))])
    rng = np.random.default_rng(args.seed)
    shuffled = np.stack([v[rng.permutation(len(v))] for v in videos])
    half = len(videos) // 2
    extractor = I3DFeatures(batch_size=args.batch_size)

    start = time.perf_counter()
    extractor(videos[:args.batch_size])  # compile
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    features = extractor(videos)
    run_s = time.perf_counter() - start
    shuffled_features = extractor(shuffled)
    print(f"| I3D, {args.num_frames}x{args.size}x{args.size} uint8 -> 224x224, batch {extractor.batch_size} | "
          f"{len(videos) / run_s:.2f} clips/s ({run_s / len(videos):.2f} s/clip; compile {compile_s:.1f} s) |")

    a, b = stats_of(features[:half]), stats_of(features[half:])
    a_shuffled, b_shuffled = stats_of(shuffled_features[:half]), stats_of(shuffled_features[half:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankWarning)
        rows = [("A vs B (disjoint halves, same distribution)", frechet_distance(*a, *b)),
                ("A vs A with shuffled frames (same frames, no coherent motion)", frechet_distance(*a, *a_shuffled)),
                ("A vs B with shuffled frames", frechet_distance(*a, *b_shuffled)),
                ("A with shuffled frames vs B with shuffled frames", frechet_distance(*a_shuffled, *b_shuffled))]
    print(f"\nN = {half} videos per half ({args.num_frames} frames, {args.size}x{args.size}, seed {args.seed})\n")
    print("| pair | FVD |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
