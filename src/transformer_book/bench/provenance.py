"""Where a measurement came from: machine, GPU, clocks, library versions, date, commit.

Every probe is guarded: a missing ``nvidia-smi``, ``git`` or ``triton`` gives ``None`` for its
fields, never an exception, so provenance can be collected anywhere (the tests do, on a CPU).
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["collect_provenance", "git_state", "nvidia_smi_query", "NVIDIA_SMI_FIELDS"]

NVIDIA_SMI_FIELDS = (
    "name", "driver_version", "pstate", "temperature.gpu", "power.limit",
    "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    """stdout of ``cmd``, stripped, or None if the tool is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(path: Path | str | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` for the repository holding ``path``
    (default: this package's source). None when it is not a git checkout (an installed wheel)."""
    cwd = Path(path) if path is not None else _PACKAGE_DIR
    commit = _run(["git", "rev-parse", "HEAD"], cwd=cwd)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def nvidia_smi_query(index: int = 0, fields=NVIDIA_SMI_FIELDS) -> dict | None:
    """One GPU's ``nvidia-smi --query-gpu`` fields (clocks in MHz, power in W) or None."""
    out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", f"-i={index}"])
    if not out:
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    if len(values) != len(fields):
        return None
    return dict(zip(fields, values))


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", None)


def collect_provenance(device_index: int = 0) -> dict:
    """A JSON-ready dict describing this machine and software, for a benchmark record."""
    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # noqa: BLE001 - a probe, never fatal
        cudnn = None
    prov = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "triton": _triton_version(),
        "git": git_state(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "gpu": None,
        "nvidia_smi": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device_index)
        prov["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_memory_bytes": int(props.total_memory),
            "multiprocessors": int(props.multi_processor_count),
            "device_count": torch.cuda.device_count(),
        }
        prov["nvidia_smi"] = nvidia_smi_query(device_index)
    return prov
