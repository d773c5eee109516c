"""The benchmark harness behind `sfv-jax bench`.

inference: one-step SF-V vs multi-step SVD with CFG, per pipeline stage (sfv_jax.bench.inference);
vs-torch: the same weights in diffusers (PyTorch) and sfv-jax, time and relative difference
(sfv_jax.bench.vs_torch); train: the SF-V train step's time, throughput, FLOP/s, MFU and memory
(sfv_jax.bench.train). sfv_jax.bench.report holds the shared statistics, tables and JSON writing.
"""
