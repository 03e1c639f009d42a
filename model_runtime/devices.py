"""Which device and dtype a pipeline runs on.

Defaults: CUDA in fp16 (bf16 for the flow-matching transformers, whose published weights are
bf16 and overflow in fp16), Apple MPS in fp16, otherwise CPU in fp32 — bf16/fp16 matmuls on
CPU are slower than fp32, badly so without AVX512-BF16. Every choice can be overridden by an
argument or by the environment (``MEDISYN_DEVICE``, ``MEDISYN_DTYPE``).
"""
from __future__ import annotations

import os

import torch

from model_runtime.errors import ModelRuntimeError

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
# Pipeline families that are trained and shipped in bf16.
_BF16_FAMILIES = {"flux", "sd3"}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """'fp16' / 'float16' / 'half' / torch.float16 ... -> torch.dtype."""
    if isinstance(value, torch.dtype):
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {value!r}; use one of fp32, fp16, bf16")
    return _DTYPE_NAMES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


class DeviceUnavailableError(ModelRuntimeError, RuntimeError):
    """The requested device exists in torch's vocabulary but not on this machine."""


def check_device_name(name: str) -> str:
    """``name`` lower-cased if it is cpu, cuda, cuda:N or mps (availability not checked)."""
    choice = str(name).strip().lower()
    if not (choice in ("cpu", "cuda", "mps") or (choice.startswith("cuda:") and choice[5:].isdigit())):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps")
    return choice


def pick_device(prefer: str | None = None) -> str:
    """'cuda' (or 'cuda:N') if usable, then 'mps', else 'cpu'. ``prefer`` or MEDISYN_DEVICE wins."""
    choice = prefer or os.environ.get("MEDISYN_DEVICE") or None
    if choice:
        choice = check_device_name(choice)
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {choice!r} requested but CUDA is not available to this torch build")
        if choice.startswith("cuda:") and int(choice[5:]) >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {choice!r} requested but this machine has "
                                         f"{torch.cuda.device_count()} CUDA device(s)")
        if choice == "mps" and not mps_available():
            raise DeviceUnavailableError("device 'mps' requested but MPS is not available")
        return choice
    if torch.cuda.is_available():
        return "cuda"
    if mps_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, prefer: str | torch.dtype | None = None, *, family: str | None = None) -> torch.dtype:
    """Default dtype for ``device`` (and model ``family``); ``prefer`` or MEDISYN_DTYPE wins."""
    choice = prefer or os.environ.get("MEDISYN_DTYPE") or None
    if choice:
        return parse_dtype(choice)
    if device.startswith("cuda"):
        if family in _BF16_FAMILIES and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


# --- CPU threads -------------------------------------------------------------------------

MAX_DEFAULT_THREADS = 8  # past ~8 intra-op threads a UNet step on CPU gains little (memory-bound)


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads and cores outside its CPU
    affinity, e.g. a container's or taskset's limit, not counted)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as a, open(f"{topology}/core_id") as b:
                cores.add((a.read().strip(), b.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology (not Linux): count logical CPUs
    return max(1, len(cores))


def default_threads(*, load: float | None = None) -> int:
    """torch intra-op threads when the user does not say (``--threads``, ``MEDISYN_THREADS``).

    Physical cores, capped at MAX_DEFAULT_THREADS, and no more than the cores the rest of the
    machine leaves idle (cores minus the 1-minute load average, at least 1). torch's default —
    every core — collapses on a busy machine: OpenMP threads spin waiting for a core that
    another process holds (measured here: 4 images took 21 s with 2 threads vs 3.1 s with 1
    while other jobs ran). The count can thus differ between runs; pass ``--threads`` when
    images must be bit-identical across runs (the thread count changes the last float bits).
    """
    env = os.environ.get("MEDISYN_THREADS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    cores = physical_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    idle = int(cores - load + 0.5)
    return max(1, min(cores, MAX_DEFAULT_THREADS, idle))
