"""Reproductions of the paper's findings at laptop scale (issue 6).

Each experiment is a module with a config dataclass (its YAML recipe lives in
``recipes/experiments/``) and a ``python -m sdcompress.experiments.<name>`` entry:
``grid`` (SD against the generalization gap over an (η, batch) grid and a weight-decay
axis), ``eos_sweep`` (SD/d against η around the edge of stability), ``grokking``
((a + b) mod 97) and ``compression_tie`` (does the test-loss change after SD-guided
compression track SD?). Results go to ``results/<name>/`` (see results/README.md).
"""
