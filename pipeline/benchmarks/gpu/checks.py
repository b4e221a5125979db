"""The `env` section (torch, device, nvidia-smi, the flash-attention kernel, a big bf16 GEMM)
and the `pytest` section (the CUDA-marked tests in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from pipeline.benchmarks.gpu.config import REPO
from pipeline.benchmarks.gpu.part import Part


def worker_env(part: Part, cfg: dict[str, Any]) -> None:
    import platform

    import torch

    from lrt import accounting

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=name,
            capability=list(torch.cuda.get_device_capability()),
            sm_count=props.multi_processor_count,
            total_mem_gb=props.total_memory / 2**30,
            peak_flops_bf16_dense=accounting.peak_flops(name),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                 "--format=csv,noheader"],
                capture_output=True, text=True, timeout=15,
            )  # fmt: skip
            info["nvidia_smi"] = out.stdout.strip()
        except Exception as exc:  # noqa: BLE001
            info["nvidia_smi"] = repr(exc)
    part.put("env", info)
    # Flash attention: the SDPA flash kernel must accept a bf16 causal call.
    if torch.cuda.is_available():
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            q = torch.randn(2, 6, 2048, 128, device="cuda", dtype=torch.bfloat16)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            torch.cuda.synchronize()
            part.put("flash_attention", {"sdpa_flash_bf16_causal": "ok"})
        except Exception as exc:  # noqa: BLE001
            part.error("flash_attention", exc)
        try:  # matmul sanity: what the card gives on a big bf16 GEMM
            a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                a @ a
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                a @ a
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / 10
            part.put("gemm_8192_bf16", {"tflops": 2 * 8192**3 / dt / 1e12})
        except Exception as exc:  # noqa: BLE001
            part.error("gemm_8192_bf16", exc)


def worker_pytest(part: Part, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_lrt_model.py",
           "tests/test_lrt_optim.py", "tests/test_static_decode.py",
           "-p", "no:cacheprovider"]  # fmt: skip
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        part.put("pytest", {"rc": out.returncode, "cmd": " ".join(cmd[1:]),
                            "tail": (out.stdout + out.stderr)[-3000:]})  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        part.error("pytest", exc)
