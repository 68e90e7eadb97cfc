"""Device memory: how much is free, and how much one sample of a generator's attack pass needs.

The engine sizes its passes with these (`Engine.images_per_pass`): a pass of n samples keeps
about n x `activation_bytes` for its backward, and must fit in what `free_bytes` reports.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from deepshield.models import Generator

CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")
CGROUP_USAGE = Path("/sys/fs/cgroup/memory.current")


def free_bytes(device: torch.device) -> int:
    """Bytes this process can still allocate on `device`: on CUDA the driver's free memory plus
    what torch's allocator holds unused; on a CPU the kernel's MemAvailable, within the
    container's cgroup limit when there is one."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = _meminfo_available()
    with contextlib.suppress(OSError, ValueError):  # no cgroup v2, or no limit ("max")
        available = min(available, int(CGROUP_LIMIT.read_text()) - int(CGROUP_USAGE.read_text()))
    return max(0, available)


def _meminfo_available() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def activation_bytes(generator: Generator, size: int, dtype: torch.dtype | None) -> int:
    """Bytes of the tensors one forward pass of one [1, C, size, size] sample keeps for the
    backward (the generator's weights excluded, each storage counted once), under autocast to
    `dtype` when given. Measured by running that forward on the generator's device."""
    device = next(generator.parameters()).device
    weights = {t.untyped_storage().data_ptr() for t in [*generator.parameters(), *generator.buffers()]}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.zeros(1, generator.input_channels, size, size, device=device, requires_grad=True)
    condition = torch.zeros(1, generator.condition_dim, device=device) if generator.condition_dim else None
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        output = generator(x, condition)
    return sum(kept.values()) + output.numel() * output.element_size()
