"""Topology names -> devices to compile for, and the facts of each TPU chip (HBM, peak bf16 FLOP/s).

Names: "cpu:N" (N of this process's CPU devices; fake ones via XLA_FLAGS=--xla_force_host_platform_device_count=N)
or "<chip>:<AxBxC>" for a TPU slice (e.g. v5p:2x2x1, v4:2x2x1, v5e:2x4, v6e:4x4), whose compile-only devices come
from libtpu's topology description (jax.experimental.topologies.get_topology_desc, as MaxText's train_compile.py
does): no TPU is needed, only the libtpu package (`pip install -e ".[tpu]"`). A multi-host slice (v5e:4x4 is
4 hosts) gives every host's devices, so one process plans the whole slice.
"""

from __future__ import annotations

import dataclasses
import os
import re

from sfv_jax.errors import SfvError

GIB = 2 ** 30
INSTALL_HINT = 'pip install -e ".[tpu]"'


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip (a JAX device) as the plan counts it: HBM bytes and peak dense bf16 FLOP/s."""

    name: str
    hbm_bytes: int | None
    peak_bf16_flops: float | None


# Per chip, from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e; the
# "chip specifications" tables), read 2026-12. A v4 or v5p chip's two TensorCores run as one JAX device (megacore),
# so its figures are the chip's.
CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12),     # 32 GiB HBM2, 275 TFLOP/s bf16
    "v5e": Chip("v5e", 16 * GIB, 197e12),   # 16 GiB HBM2, 197 TFLOP/s bf16
    "v5p": Chip("v5p", 95 * GIB, 459e12),   # 95 GiB HBM2e, 459 TFLOP/s bf16
    "v6e": Chip("v6e", 32 * GIB, 918e12),   # 32 GiB HBM, 918 TFLOP/s bf16 (Trillium)
}
CPU = Chip("cpu", None, None)  # host memory and FLOP/s are the machine's; the plan reports neither
# libtpu's chip_config_name per chip: v4 defaults to one device per TensorCore, but JAX on a v4 VM runs megacore.
CHIP_CONFIG = {"v4": "megacore"}
_NAME = re.compile(r"^(?P<chip>[a-z0-9]+):(?P<dims>\d+(x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology: its name, platform ("tpu" or "cpu"), chip facts, devices and host count."""

    name: str
    platform: str
    chip: Chip
    devices: tuple
    hosts: int


def libtpu_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("libtpu") is not None


def parse_topology(name: str) -> Topology:
    """The devices of topology `name`; an SfvError (one line) for an unknown name or a missing libtpu."""
    if name.startswith("cpu:"):
        return _cpu_topology(name)
    match = _NAME.match(name)
    if match is None or match["chip"] not in CHIPS:
        raise SfvError(f"unknown topology {name!r}: use cpu:N or CHIP:AxB[xC] with CHIP one of "
                       f"{', '.join(CHIPS)} (e.g. v5p:2x2x1, v5e:2x4)")
    if not libtpu_available():
        raise SfvError(f"planning for {name} needs libtpu (TPU topologies are compiled without a TPU): "
                       f"{INSTALL_HINT}")
    chip = match["chip"]
    devices = _tpu_devices(name, chip)
    return Topology(name, "tpu", CHIPS[chip], tuple(devices), len({d.process_index for d in devices}))


def _cpu_topology(name: str) -> Topology:
    import jax
    count = name.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise SfvError(f"unknown topology {name!r}: cpu:N takes a device count N >= 1, e.g. cpu:8")
    devices = jax.devices("cpu")
    if len(devices) < int(count):
        raise SfvError(f"{name} needs {count} CPU devices, this process has {len(devices)}: run with "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    return Topology(name, "cpu", CPU, tuple(devices[:int(count)]), 1)


def _tpu_devices(name: str, chip: str) -> list:
    """Compile-only TPU devices of slice `name`. libtpu writes setup warnings (no TPU metadata server, no worker
    hostnames) straight to file descriptor 2 when it loads on a machine without a TPU; they are dropped here (a bad
    name still fails with libtpu's own one-line reason)."""
    from jax.experimental.topologies import get_topology_desc
    # libtpu takes /tmp/libtpu_lockfile when it loads, so that two processes never drive one TPU's chips; a second
    # process loading it then fails ("Internal error when accessing libtpu multi-process lockfile"). A plan only
    # compiles (JAX's platform is the CPU) and never opens a chip: two plans may run at once, and a plan on a TPU VM
    # leaves the chips to a training run.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"chip_config_name": CHIP_CONFIG[chip]} if chip in CHIP_CONFIG else {}
    with _stderr_dropped():
        try:
            return list(get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
        except Exception as e:  # libtpu says what is wrong with the name (bad shape, not divisible into hosts)
            error = e
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise SfvError(f"topology {name!r}: {message}")


class _stderr_dropped:
    """Points file descriptor 2 at /dev/null for the block (C++ writers included)."""

    def __enter__(self):
        import sys
        sys.stderr.flush()
        self._file = open(os.devnull, "wb")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import sys
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.close()
        return False
