"""What a timing was measured on: the processor or GPU, threads, and the torch and Pyro versions.

Speed figures depend on all four (pyrovae's CPU step runs at different ratios to the same hand
loop on an Intel Xeon and an AMD EPYC), so every benchmark prints this line with its figures.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pyro
import torch


def processor() -> str:
    """The CPU's model name as ``lscpu`` gives it (with family and model where the name is
    generic, as on some virtual machines), else the architecture."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    if "family" not in name.lower() and "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def describe(device: torch.device | str = "cpu") -> str:
    """One line: the device (GPU name, or CPU model and core count), torch's threads, and the
    torch and Pyro versions.

    >>> "torch" in describe("cpu") and "pyro-ppl" in describe("cpu")
    True
    """
    device = torch.device(device)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        import os

        where = f"{processor()}, {os.cpu_count()} CPUs"
    threads = torch.get_num_threads()
    return (f"{where}; {threads} torch thread{'s' if threads != 1 else ''}; torch {torch.__version__}, "
            f"pyro-ppl {pyro.__version__}, Python {platform.python_version()}")  # fmt: skip


__all__ = ["describe", "processor"]
