"""Benchmark: test loss against compressed size, SD-guided plans against baselines at equal budgets.

For each built-in setting (``tiny-gpt2`` on pydoc, the ``digits`` MLP, the ``modular``
MLP), trained at the edge of stability with its documented defaults (cached), this:

1. estimates SD (``--method``, default SD-PS) and the dominant Lyapunov subspace;
2. plans at several equal budgets (fraction of the target weights' stored values kept):
   - ``sd`` (rank, SD-guided allotment + subspace-weighted SVD; ``below_floor`` so it can
     reach every budget — the table marks budgets below the SD floor),
   - ``uniform-rank``, ``energy``, ``fisher`` (rank baselines),
   - ``sd-prune`` (SD-guided pruning: kept weights by SD share, subspace-weighted scores)
     and ``magnitude`` (pruning baseline),
   plus the unbudgeted ``sd auto`` plan (the floor alone), ``sd bits auto`` and uniform
   8 / 4 bits (compared on bytes);
3. compresses a copy for each plan and measures the test loss (and accuracy).

Writes ``results/compression/compression.json`` (every number), ``compression.md`` (tables)
and ``pareto.png`` (test loss vs size per setting). Run::

    nice -n 10 python benchmarks/compression.py            # all three settings
    python benchmarks/compression.py --quick --models mlp   # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sdcompress.compress import compress_, count_storage
from sdcompress.data import BatchStream
from sdcompress.estimator import EstimateConfig, estimate_sd
from sdcompress.evaluate import dataset_metrics
from sdcompress.io import save_figure_atomic, write_json_atomic, write_text_atomic
from sdcompress.plan import PlanConfig, describe_modules, make_plan, module_statistics, size_fraction
from sdcompress.train import pretrained_builtin

logger = logging.getLogger("benchmarks.compression")

SETTINGS = {"tiny-gpt2": "pydoc", "mlp": "digits", "modular-mlp": "modular"}
RANK_STRATEGIES = ("sd", "uniform-rank", "energy", "fisher")
PRUNE_STRATEGIES = ("sd-prune", "magnitude")


def _plan_config(strategy: str, budget: float | None) -> PlanConfig:
    b = {} if budget is None else {"params_fraction": budget}
    if strategy == "sd-prune":
        return PlanConfig(strategy="sd", target_rank="off", prune="auto", budget=b, below_floor=True)
    return PlanConfig(strategy=strategy, budget=b, below_floor=True)


def run_setting(name: str, budgets: list[float], est_cfg: EstimateConfig, quick: bool) -> dict:
    """Every plan of one setting and its test loss."""
    t0 = time.perf_counter()
    overrides = {}
    if quick:
        from sdcompress.train import default_train_config

        overrides["train_config"] = replace(default_train_config(name), steps=50, log_every=25)
    loaded, data, result = pretrained_builtin(name, **overrides)
    model = loaded.model
    wd, lr = result.config.weight_decay, result.config.lr
    stream = BatchStream(data.train, result.data_config.batch_size, seed=result.data_config.seed)
    est = estimate_sd(model, stream, lr=lr, weight_decay=wd, loss_fn=loaded.loss_fn, config=est_cfg)
    lyap = estimate_sd(model, stream, lr=lr, weight_decay=wd, loss_fn=loaded.loss_fn, config=est_cfg, method="lyapunov")
    logger.info("%s: %s | %s", name, est.summary(), lyap.summary())
    modules = describe_modules(model)
    fisher_batches = BatchStream(data.train, result.data_config.batch_size, seed=1).take(8)
    stats = module_statistics(model, modules, fisher_batches, loss_fn=loaded.loss_fn)
    limit = 256 if quick else None
    base_loss, base_acc, n_test = dataset_metrics(loaded, data.test, batch_size=64, limit=limit)
    params0, bytes0 = count_storage(model)
    rows = []

    def measure(label: str, strategy: str, budget: float | None, cfg: PlanConfig) -> None:
        plan = make_plan(est, modules, cfg, subspace=lyap, stats=stats)
        c = copy.deepcopy(loaded)
        c.model = copy.deepcopy(model)
        rep = compress_(c.model, plan)
        loss, acc, _ = dataset_metrics(c, data.test, batch_size=64, limit=limit)
        scale = plan.budget.get("sd_scale")
        rows.append({
            "label": label, "strategy": strategy, "budget": budget,
            "params_fraction": size_fraction(plan.modules, "params_fraction"),
            "bytes_fraction": size_fraction(plan.modules, "bytes_fraction"),
            "params_after": rep.params_after, "bytes_after": rep.bytes_after,
            "test_loss": loss, "delta": loss - base_loss, "test_accuracy": acc,
            "sd_scale": scale, "below_floor": scale is not None and scale < 1.0,
            "mean_rel_error": sum(m.rel_error for m in rep.modules) / len(rep.modules),
        })
        logger.info("%s %-14s budget %-5s size %.3f  test loss %.4f (%+.4f)", name, label, budget,
                    rows[-1]["params_fraction"], loss, loss - base_loss)

    for budget in budgets:
        for s in RANK_STRATEGIES + PRUNE_STRATEGIES:
            measure(s, s, budget, _plan_config(s, budget))
    measure("sd auto", "sd", None, PlanConfig())
    measure("sd-prune auto", "sd-prune", None, PlanConfig(target_rank="off", prune="auto"))
    measure("sd bits auto", "sd-bits", None, PlanConfig(target_rank="off", bits="auto"))
    for b in (8, 4):
        measure(f"uniform {b} bits", "uniform-bits", None, PlanConfig(target_rank="off", bits=b))
    return {
        "model": name, "dataset": SETTINGS[name], "d": est.d, "sd": est.sd, "sd_over_d": est.sd / est.d,
        "sd_interval": est.sd_interval, "lyapunov_sd": lyap.sd, "lyapunov_m": len(lyap.exponents),
        "lr": lr, "weight_decay": wd, "at_eos": result.verdict.at_eos, "train_steps": result.steps,
        "base_test_loss": base_loss, "base_test_accuracy": base_acc, "n_test": n_test,
        "params": params0, "bytes": bytes0, "target_modules": [m.name for m in modules],
        "plan_notes": list(make_plan(est, modules, PlanConfig(), subspace=lyap).notes),
        "rows": rows, "wall_time_s": time.perf_counter() - t0, "estimate_settings": est.settings,
    }


def markdown(results: list[dict], budgets: list[float]) -> str:
    lines = ["# Compression benchmark: SD-guided plans vs baselines at equal size", "",
             "SD plan minus the best baseline at each budget (test loss Δ difference; negative: SD is better):", "",
             *verdicts(results, budgets), "",
             "Test loss change (nats) after compressing the target weights to a fraction of their stored values; "
             "lower is better. `*`: the SD plan keeps fewer degrees of freedom than SD at that budget (below the floor). "
             "Bold: best of the row's budget column among rank methods / pruning methods. In parentheses: the size "
             "reached; ranks are integers, so a method can land below the budget (which disadvantages it).", ""]
    for r in results:
        lines += [f"## {r['model']} on {r['dataset']}", "",
                  f"d = {r['d']:,}, SD = {r['sd']:.1f} (SD/d = {r['sd_over_d']:.3f}), Lyapunov D = {r['lyapunov_sd']:.1f} "
                  f"(m = {r['lyapunov_m']}), η = {r['lr']}, wd = {r['weight_decay']}, at EoS: {r['at_eos']}; "
                  f"estimator: {r.get('estimator', '?')}; "
                  f"dense test loss {r['base_test_loss']:.4f}"
                  + (f", accuracy {r['base_test_accuracy']:.3f}" if r["base_test_accuracy"] is not None else "") + ".", ""]
        if r["base_test_accuracy"] is not None and r["base_test_accuracy"] < 0.05:
            lines += ["**Caveat:** the dense model is at chance level on the test set (its default EoS run does not learn "
                      "the task), so this setting cannot show whether compression keeps generalization; compression "
                      "pulls the predictions towards uniform and lowers the test loss.", ""]
        lines += ["| method | " + " | ".join(f"{b:.0%}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for group in (RANK_STRATEGIES, PRUNE_STRATEGIES):
            best = {}
            for b in budgets:
                vals = [x["delta"] for x in r["rows"] if x["budget"] == b and x["strategy"] in group]
                best[b] = min(vals) if vals else None
            for s in group:
                cells = []
                for b in budgets:
                    x = next((x for x in r["rows"] if x["budget"] == b and x["label"] == s), None)
                    if x is None:
                        cells.append("-")
                        continue
                    txt = f"{x['delta']:+.3g}" + ("*" if x["below_floor"] else "") + f" ({x['params_fraction']:.2f})"
                    cells.append(f"**{txt}**" if x["delta"] == best[b] else txt)
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines += ["", "Unbudgeted plans:", "", "| plan | params fraction | bytes fraction | test loss Δ |", "|---|---:|---:|---:|"]
        for x in r["rows"]:
            if x["budget"] is None:
                lines.append(f"| {x['label']} | {x['params_fraction']:.3f} | {x['bytes_fraction']:.3f} | {x['delta']:+.3g} |")
        lines += ["", "Plan notes (sd auto): " + " ".join(r["plan_notes"][:2]), ""]
    return "\n".join(lines) + "\n"


def verdicts(results: list[dict], budgets: list[float], tie: float = 1e-4) -> list[str]:
    """Where SD guidance wins, ties (|Δ difference| < ``tie`` nats) or loses against the best baseline."""
    lines = []
    for r in results:
        for sd_label, group in (("sd", ("uniform-rank", "energy", "fisher")), ("sd-prune", ("magnitude",))):
            parts = []
            for b in budgets:
                rows = {x["label"]: x for x in r["rows"] if x["budget"] == b}
                if sd_label not in rows:
                    continue
                best = min(group, key=lambda g: rows[g]["delta"])
                diff = rows[sd_label]["delta"] - rows[best]["delta"]
                word = "ties" if abs(diff) < tie else "wins" if diff < 0 else "LOSES"
                parts.append(f"{b:.0%}: {word} ({diff:+.3g} vs {best})")
            lines.append(f"- {r['model']}, {sd_label}: " + "; ".join(parts))
    return lines


def pareto(results: list[dict]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(results), 4))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    styles = {"sd": ("tab:red", "o-"), "uniform-rank": ("tab:blue", "s--"), "energy": ("tab:green", "^--"),
              "fisher": ("tab:purple", "v--"), "sd-prune": ("tab:orange", "o-"), "magnitude": ("tab:gray", "x--")}
    for ax, r in zip(axes, results):
        for s, (color, style) in styles.items():
            pts = sorted((x["params_fraction"], x["test_loss"]) for x in r["rows"] if x["label"] == s)
            if pts:
                ax.plot(*zip(*pts), style, color=color, label=s, ms=4)
        for x in r["rows"]:
            if x["budget"] is None:
                ax.plot(x["bytes_fraction"] if "bits" in x["label"] else x["params_fraction"], x["test_loss"], "*", ms=9,
                        label=x["label"])
        ax.axhline(r["base_test_loss"], color="k", lw=0.8, ls=":", label="dense")
        ax.set_xlabel("target weights kept (stored values; bytes for bit plans)")
        ax.set_ylabel("test loss (nats)")
        ax.set_title(f"{r['model']} (SD/d = {r['sd_over_d']:.2f})")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--method", default="ps", choices=["exact", "slq", "kde", "ps"])
    p.add_argument("--output", default="results/compression")
    p.add_argument("--quick", action="store_true", help="tiny estimator and training settings (a smoke test, not results)")
    p.add_argument("--light", action="store_true",
                   help="the main job's lighter estimator settings (16 SLQ runs × 40 steps, Lyapunov 16 × 50) instead of the defaults")
    p.add_argument("--render", action="store_true", help="only re-render compression.md and pareto.png from compression.json")
    p.add_argument("--append", action="store_true", help="merge into an existing compression.json (same budgets), replacing the models run now")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("transformers", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = Path(args.output)
    if args.render:
        payload = json.loads((out / "compression.json").read_text())
        write_text_atomic(out / "compression.md", markdown(payload["results"], payload["budgets"]))
        save_figure_atomic(pareto(payload["results"]), out / "pareto.png")
        return 0
    torch.manual_seed(0)
    est_cfg = EstimateConfig(method=args.method)
    if args.quick:
        est_cfg = replace(est_cfg, slq_runs=4, lanczos_steps=20, n_bootstrap=20, lyapunov_steps=10, lyapunov_warmup=2,
                          lyapunov_exponents=4)
    if args.light:
        from sdcompress.cli.run import MAIN_JOB_ESTIMATE

        est_cfg = replace(est_cfg, **MAIN_JOB_ESTIMATE)
    results = [run_setting(m, args.budgets, est_cfg, args.quick) for m in args.models]
    for r in results:
        r["estimator"] = "light (main job)" if args.light else "quick" if args.quick else "EstimateConfig defaults"
    if args.append and (out / "compression.json").is_file():
        old = json.loads((out / "compression.json").read_text())
        if old.get("budgets") != args.budgets:
            raise SystemExit(f"--append: {out / 'compression.json'} has budgets {old.get('budgets')}, not {args.budgets}")
        results = [r for r in old["results"] if r["model"] not in args.models] + results
        results.sort(key=lambda r: list(SETTINGS).index(r["model"]))
    payload = {"budgets": args.budgets, "method": args.method, "torch": torch.__version__, "results": results}
    write_json_atomic(out / "compression.json", payload)
    write_text_atomic(out / "compression.md", markdown(results, args.budgets))
    save_figure_atomic(pareto(results), out / "pareto.png")
    print((out / "compression.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
