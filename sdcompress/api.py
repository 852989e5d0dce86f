"""The public Python API: each stage as one function taking a config object.

    from sdcompress import load_model, load_data, estimate_sd, plan_model, compress_, evaluate

    loaded = load_model("tiny-gpt2")                       # built-in, folder, hub name, or compressed folder
    data = load_data("pydoc")
    stream = BatchStream(data.train, 16, seed=0)           # the noise ω
    est = estimate_sd(loaded.model, stream, lr=0.3, weight_decay=1e-2)
    sub = estimate_sd(loaded.model, stream, lr=0.3, weight_decay=1e-2, method="lyapunov")
    plan = plan_model(loaded, est, PlanConfig(target_rank="auto"), subspace=sub)
    report = compress_(loaded.model, plan)                 # in place
    ev = evaluate(loaded, data, stream=stream, lr=0.3, weight_decay=1e-2)

or the whole job at once: ``run_pipeline(RunConfig(model=ModelConfig("tiny-gpt2")))``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcompress.compress import CompressionReport, compress_, load_compressed, save_compressed
from sdcompress.config import DataConfig, ModelConfig
from sdcompress.data import BatchStream, DatasetBundle, load_data
from sdcompress.estimator import EstimateConfig, estimate_sd
from sdcompress.estimator.result import SDEstimate
from sdcompress.evaluate import EvalConfig, EvalReport, Verdict, evaluate, verdict
from sdcompress.models import LoadedModel
from sdcompress.models import load_model as _load_plain
from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.pipeline import OutputConfig, RunConfig, run_pipeline
from sdcompress.plan import Plan, PlanConfig, make_plan, planning_inputs
from sdcompress.report import RunReport, render_run
from sdcompress.train import TrainConfig


def load_model(name_or_path: str | Path, *, seed: int = 0, **config: Any) -> LoadedModel:
    """Load any model the toolkit knows: a compressed folder, a ``save_pretrained`` folder,
    a built-in name (``tiny-gpt2``, ``mlp``, ``modular-mlp``) or a hub name.

    Compressed folders (written by ``save_compressed`` / the main job's ``model/``) are
    rebuilt with their low-rank, masked and quantized modules; plain ``from_pretrained``
    cannot do that.

    Args:
        name_or_path: what to load.
        seed: initialisation seed of built-ins.
        **config: constructor options of a built-in.

    Raises:
        ModelError, OfflineError, CompressionError: see the loaders.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / COMPRESSION_FILE).is_file():
        return load_compressed(path)
    return _load_plain(str(name_or_path), seed=seed, **config)


def plan_model(
    loaded: LoadedModel,
    estimate: SDEstimate | None,
    config: PlanConfig | None = None,
    *,
    subspace: SDEstimate | None = None,
    batches: list[Any] | None = None,
) -> Plan:
    """Plan the compression of a model: find its target modules, gather the statistics the
    strategy needs (:func:`sdcompress.plan.planning_inputs`, the glue the pipeline uses
    too), and call the pure planner (:func:`sdcompress.plan.make_plan`).

    Args:
        loaded: the model (not changed).
        estimate: its SD estimate (``None`` only for baselines with a budget).
        config: planner settings.
        subspace: a Lyapunov estimate with the dominant subspace.
        batches: minibatches for the Fisher baseline and for the per-module curvature of
            the ``sd``, ``trace`` and ``hawq`` strategies (the first ``curvature_batches``);
            without them the SD plan keeps per-module floors and ``trace``/``hawq`` refuse.

    Raises:
        ConfigError, PlanError, ModelError: see the planner and the target patterns.
    """
    config = config or PlanConfig()
    inputs = planning_inputs(loaded.model, config, params=estimate.params if estimate is not None else None,
                             fisher_batches=batches or (), curvature_batches=batches or (), loss_fn=loaded.loss_fn)
    return make_plan(estimate, inputs.modules, config, subspace=subspace, stats=inputs.stats, curvature=inputs.curvature)


__all__ = [
    "BatchStream",
    "CompressionReport",
    "DataConfig",
    "DatasetBundle",
    "EstimateConfig",
    "EvalConfig",
    "EvalReport",
    "LoadedModel",
    "ModelConfig",
    "OutputConfig",
    "Plan",
    "PlanConfig",
    "RunConfig",
    "RunReport",
    "SDEstimate",
    "TrainConfig",
    "Verdict",
    "compress_",
    "estimate_sd",
    "evaluate",
    "load_compressed",
    "load_data",
    "load_model",
    "make_plan",
    "plan_model",
    "render_run",
    "run_pipeline",
    "save_compressed",
    "verdict",
]
