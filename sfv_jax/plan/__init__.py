"""`sfv-jax plan`: compile the real train step (or the one-step sampler) ahead of time for a named topology, without
its devices, and report per-device memory, FLOPs and the implied step time.

topology.py: a topology name -> compile-only devices and the chip's facts. compile.py: the abstract state and batch,
the programs lowered and compiled. report.py: the figures, as text and JSON. cli.py: the command.
"""
