"""Worker of tests/test_distributed.py (not a test module): estimate SD of a small MLP on
fixed digits batches and write the result as JSON (rank 0 only).

Launched as ``torchrun --standalone --nproc_per_node N tests/distributed_worker.py OUT.json``
it creates an ``accelerate.Accelerator(cpu=True)`` (gloo), so every Hessian-vector product
and gradient of the estimator is data-parallel; run in-process (``estimate_all()``) it is the
single-process reference.
"""

from __future__ import annotations

import json
import os
import sys

import torch

LR, WD = 0.5, 1e-3


def estimate_all() -> dict:
    """SD-PS (SLQ, sharded HVPs) and Lyapunov (sharded gradients and HVPs) on the same batches."""
    from sdcompress.data import BatchStream, digits
    from sdcompress.estimator import EstimateConfig, estimate_sd
    from sdcompress.linalg.distributed import world
    from sdcompress.models import MLP

    torch.manual_seed(0)
    model = MLP((64, 10, 10)).double()  # d = 740
    batches = BatchStream(digits().train, batch_size=31, seed=0).take(3)  # odd: shards of 16 and 15
    batches = [(x.double(), y) for x, y in batches]
    out = {"world_size": world()[1]}
    ps = estimate_sd(model, batches, lr=LR, weight_decay=WD, config=EstimateConfig(method="ps", slq_runs=3, lanczos_steps=25, n_bootstrap=0))
    lyap = estimate_sd(  # one batch per step: the list is used as given, so repeat it for 6 steps
        model, batches * 2, lr=LR, weight_decay=WD,
        config=EstimateConfig(method="lyapunov", lyapunov_exponents=4, lyapunov_steps=6, lyapunov_warmup=2, n_bootstrap=20),
    )
    for name, est in (("ps", ps), ("lyapunov", lyap)):
        out[name] = {"sd": est.sd, "exponents": [float(x) for x in est.exponents], "n_hvp": est.n_hvp, "d": est.d}
    return out


def main(path: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    result = estimate_all()
    result["backend"] = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    if accelerator.is_main_process:
        with open(path + ".tmp", "w") as fh:
            json.dump(result, fh)
        os.replace(path + ".tmp", path)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
