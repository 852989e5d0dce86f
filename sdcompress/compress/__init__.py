"""Apply a compression plan: low-rank factors, pruning masks, int8/int4 weights.

``compress_(model, plan)`` mutates the model in place and returns a
:class:`CompressionReport`; ``save_compressed`` / ``load_compressed`` persist it. A compressed Hugging Face causal LM
also carries ``modeling_sdcompress.py`` (:mod:`sdcompress.compress.hf_remote`), so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads it without
sdcompress; :func:`~sdcompress.compress.export.export_model` writes a plain dense copy.

Quantized weights are stored packed (int8, or two int4 values per byte, plus per-group
scales) and dequantized on the fly in ``forward``: a portable fallback with no integer
kernels, which saves memory and disk, not time. Measured round-trip SNR on Gaussian
weights (group 64): int8 44.5 dB, int4 19.4 dB (tests/test_compress_primitives.py).
"""

from sdcompress.compress.apply import apply_structure_, compress_, eligible_modules, linear_view
from sdcompress.compress.base import CompressedLinear
from sdcompress.compress.io import LoadedModel, load_compressed, save_compressed
from sdcompress.compress.lowrank import LowRankLinear, weighted_svd
from sdcompress.compress.prune import MaskedLinear, prune_mask, prune_scores
from sdcompress.compress.qlinear import QuantizedLinear
from sdcompress.compress.quant import PackedTensor, dequantize_groups, quantize_groups
from sdcompress.compress.report import CompressionReport, ModuleReport, count_storage

__all__ = [
    "CompressedLinear",
    "CompressionReport",
    "LoadedModel",
    "LowRankLinear",
    "MaskedLinear",
    "ModuleReport",
    "PackedTensor",
    "QuantizedLinear",
    "apply_structure_",
    "compress_",
    "count_storage",
    "dequantize_groups",
    "eligible_modules",
    "linear_view",
    "load_compressed",
    "prune_mask",
    "prune_scores",
    "quantize_groups",
    "save_compressed",
    "weighted_svd",
]
