"""Model summary: binary vs float parameters and their memory (1 bit vs 32 bits each)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bnnrobust.binarize.convert import binary_modules, sign_activations

__all__ = ["BinaryStats", "binary_stats", "binary_summary"]


@dataclass(frozen=True)
class BinaryStats:
    """Counts of a model's parameters. Memory in bits: 1 per binary value, 32 per float."""

    binary_layers: int
    sign_activations: int
    binary_params: int
    float_params: int
    binarizers: tuple[str, ...]

    @property
    def total_params(self) -> int:
        return self.binary_params + self.float_params

    @property
    def memory_bits(self) -> int:
        return self.binary_params + 32 * self.float_params

    @property
    def float_memory_bits(self) -> int:
        """Memory if every parameter were a 32-bit float."""
        return 32 * self.total_params


def binary_stats(model: nn.Module) -> BinaryStats:
    """Count binarized (weights and biases of binary layers) and float parameters."""
    layers = binary_modules(model)
    binary_ids = {id(p) for m in layers for p in (m.weight, m.bias) if p is not None}
    binary = float_ = 0
    for p in model.parameters():
        if id(p) in binary_ids:
            binary += p.numel()
        else:
            float_ += p.numel()
    names = tuple(sorted({m.binarizer.name for m in layers}))
    return BinaryStats(len(layers), len(sign_activations(model)), binary, float_, names)


def _fmt_bits(bits: int) -> str:
    size = bits / 8
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def binary_summary(model: nn.Module) -> str:
    """A short text summary: binary layers, parameter counts and memory (1 vs 32 bits).

    BatchNorm running statistics (buffers) are not counted.
    """
    s = binary_stats(model)
    ratio = s.float_memory_bits / s.memory_bits if s.memory_bits else 1.0
    lines = [
        f"{type(model).__name__}: binarizer {', '.join(s.binarizers) or 'none (float)'}",
        f"  binary layers:     {s.binary_layers}",
        f"  sign activations:  {s.sign_activations}",
        f"  binary params:     {s.binary_params:,} (1 bit each)",
        f"  float params:      {s.float_params:,} (32 bits each)",
        f"  memory:            {_fmt_bits(s.memory_bits)} "
        f"(float model: {_fmt_bits(s.float_memory_bits)}, {ratio:.1f}x smaller)",
    ]
    return "\n".join(lines)
