"""Test set-up shared by every test: JAX on eight host-platform (CPU) devices.

The sharded code paths need several devices, and a CPU can provide eight through
`--xla_force_host_platform_device_count`. XLA reads the flag when JAX initialises its backend,
so it is set here, before any test module imports JAX. An existing device-count flag in
XLA_FLAGS is replaced; other flags are kept. Subprocesses started by tests inherit both
variables.
"""

import os
import re

NUM_DEVICES = 8

_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                os.environ.get("XLA_FLAGS", "")).split()
os.environ["XLA_FLAGS"] = " ".join(
    [*_flags, f"--xla_force_host_platform_device_count={NUM_DEVICES}"])
# The fake devices exist only on the CPU platform, so an accelerator must not take precedence.
os.environ["JAX_PLATFORMS"] = "cpu"

# Session fixtures registered here so that every test module shares one instance (Fashion-MNIST
# is prepared once per test run). Imported after the environment above is set.
from conftest_data import fashion_mnist_data_dir, image_folder  # noqa: E402,F401
