"""The model card (model/README.md): hub format (YAML front matter that parses), the
report's numbers unrounded, written when a run's report is saved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sdcompress.models.loader import COMPRESSION_FILE
from sdcompress.report.model_card import CARD_FILE, hub_id, read_front_matter, render_model_card
from sdcompress.report.run import RunReport

PLAN = {"strategy": "sd", "budget": {"params_fraction": 0.5}, "notes": ["SD ≪ d: ranks well below full are safe"],
        "modules": [{"name": "transformer.h.0.attn.c_attn", "out_features": 96, "in_features": 32, "rank": 7},
                    {"name": "transformer.h.0.mlp.c_fc", "out_features": 128, "in_features": 32, "keep_fraction": 0.25,
                     "bits": 4}]}


def make_report(model: str = "tiny-gpt2", lm: bool = True, **over) -> RunReport:
    before = {"task": "lm" if lm else "classification", "test_loss": 2.3456789, "train_loss": 2.1, "gap": 0.2456789}
    after = {"task": before["task"], "test_loss": 2.4012345, "train_loss": 2.2, "gap": 0.2012345}
    if lm:
        before["perplexity"], after["perplexity"] = math.exp(2.3456789), math.exp(2.4012345)
    else:
        before["test_accuracy"], after["test_accuracy"] = 0.9123, 0.9011
    fields = dict(model=model, dataset="pydoc", sd_before=12.345678, sd_after=10.987654, d_before=35000, d_after=21000,
                  test_loss_before=2.3456789, test_loss_after=2.4012345, params_before=35456, params_after=21234,
                  bytes_before=141824, bytes_after=52011,
                  verdict={"preserved": True, "tolerance": 0.1, "message": "generalization preserved: test loss +0.0556 nats"},
                  plan=PLAN, evaluation_before=before, evaluation_after=after, environment={"sdcompress": "0.1.0"})
    fields.update(over)
    return RunReport(**fields)


def test_card_front_matter_parses_and_holds_the_report_numbers():
    report = make_report()
    text = render_model_card(report, compression={"versions": {"sdcompress": "0.1.0"}})
    meta = read_front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"sdcompress", "compressed", "low-rank", "pruned", "int4"} <= set(meta["tags"]) and "int8" not in meta["tags"]
    assert "base_model" not in meta  # tiny-gpt2 is a built-in, not a hub repository
    block = meta["sdcompress"]
    for key in ("sd_before", "sd_after", "d_before", "d_after", "test_loss_before", "test_loss_after", "params_before",
                "params_after", "bytes_before", "bytes_after"):
        assert block[key] == getattr(report, key), key  # unrounded
    assert block["preserved"] is True and block["strategy"] == "sd"
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "text-generation" and result["dataset"]["name"] == "pydoc"
    metrics = {m["name"]: m for m in result["metrics"]}
    assert metrics["test loss (before compression)"]["value"] == report.test_loss_before
    assert metrics["test loss (after compression)"]["value"] == report.test_loss_after
    assert metrics["perplexity (after compression)"]["value"] == report.evaluation_after["perplexity"]
    assert metrics["perplexity (before compression)"]["type"] == "perplexity"
    assert metrics["sharpness dimension (before compression)"]["value"] == report.sd_before
    assert metrics["sharpness dimension (after compression)"]["value"] == report.sd_after
    body = text.split("\n---\n", 1)[1]
    assert report.verdict["message"] in body and "SD ≪ d" in body
    assert "| `transformer.h.0.attn.c_attn` | 96 × 32 | low-rank | 7 |" in body
    assert "| `transformer.h.0.mlp.c_fc` | 128 × 32 | masked+quantized | n/a | 0.250 | 4 |" in body
    assert "| SD | 12.3 | 11.0 |" in body and "| perplexity |" in body and "| bytes | 141,824 | 52,011 |" in body
    assert "trust_remote_code=True" in body and "sdcompress.load_model" in body


def test_card_variants_base_model_and_missing_numbers():
    report = make_report(model="openai-community/gpt2", sd_after=None, test_loss_after=float("nan"))
    meta = read_front_matter(render_model_card(report, fmt="dense"))
    assert meta["base_model"] == "openai-community/gpt2"
    names = {m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert "sharpness dimension (after compression)" not in names and "test loss (after compression)" not in names
    text = render_model_card(report, fmt="dense")
    assert "trust_remote_code" not in text and "from_pretrained(path)" in text
    classifier = read_front_matter(render_model_card(make_report(model="mlp", lm=False)))
    assert classifier["library_name"] == "sdcompress" and "pipeline_tag" not in classifier
    metrics = {m["name"]: m["value"] for m in classifier["model-index"][0]["results"][0]["metrics"]}
    assert metrics["test accuracy (after compression)"] == 0.9011


def test_card_without_a_run_report_uses_the_stored_sizes():
    compression = {"base": {"library": "transformers"}, "plan": PLAN, "extra": {"source_model": "gpt2"},
                   "report": {"params_before": 100, "params_after": 40, "bytes_before": 400, "bytes_after": 90}}
    text = render_model_card(None, compression=compression, fmt="remote")
    meta = read_front_matter(text)
    assert meta["sdcompress"]["params_after"] == 40 and meta["sdcompress"]["bytes_after"] == 90
    assert meta["base_model"] == "gpt2" and "model-index" not in meta
    assert "| bytes | 400 | 90 |" in text and "sdcompress.load_model" not in text


@pytest.mark.parametrize("name,expected", [("gpt2", "gpt2"), ("org/model-1.5b", "org/model-1.5b"), ("tiny-gpt2", None),
                                           ("./local", None), ("/abs/path", None), ("a/b/c", None), ("", None)])
def test_hub_id(name, expected):
    assert hub_id(name) == expected


def test_saving_a_run_report_writes_the_card_into_model(tmp_path: Path):
    report = make_report()
    report.save(tmp_path / "no-model")
    assert not (tmp_path / "no-model" / "model").exists()
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / COMPRESSION_FILE).write_text(json.dumps({"versions": {"sdcompress": "0.1.0"}}))
    report.save(tmp_path / "run")
    card = (tmp_path / "run" / "model" / CARD_FILE).read_text()
    assert read_front_matter(card)["sdcompress"]["sd_after"] == report.sd_after
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == [CARD_FILE, COMPRESSION_FILE]
