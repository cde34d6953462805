"""Device names (cpu, cuda, cuda:N) and the checks of a device that need no model."""

from __future__ import annotations

from ..errors import ConfigError


def check_device_name(device: str) -> None:
    """Refuse a device name other than cpu, cuda and cuda:N."""
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def is_cuda(device: str) -> bool:
    """Whether ``device`` names a CUDA GPU."""
    return device.startswith("cuda")


def check_torch_device(device: str) -> None:
    """Refuse an unknown device, or a CUDA device PyTorch does not see (the CPU, or no PyTorch: only the name)."""
    check_device_name(device)
    if not is_cuda(device):
        return
    try:
        import torch
    except ImportError:
        return
    if is_cuda(device) and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to PyTorch; use --device cpu")
    index = device.removeprefix("cuda:")
    if device.startswith("cuda:") and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(
            f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}); choose one of them"
        )
