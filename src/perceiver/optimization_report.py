"""`OptimizeReport`: what `perceiver.optimize` measured and chose (see `perceiver.optimization`)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OptimizeReport"]


@dataclass
class OptimizeReport:
    """What `optimize` measured: median seconds per call of each candidate it could run, the one-time cost of setting
    each up (`setup_seconds`: building it, compiling, packing weights: its warm-up calls' time beyond that many timed
    calls), the memory each keeps (`added_memory_mb`, see `optimize`), and why others were not run."""

    chosen: str
    mode: str
    seconds: dict[str, float] = field(default_factory=dict)
    setup_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    max_rel_error: dict[str, float] = field(default_factory=dict)
    added_memory_mb: dict[str, float] = field(default_factory=dict)
    not_compared: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        """Eager time over the chosen candidate's time."""
        return self.seconds["eager"] / self.seconds[self.chosen]

    def __str__(self) -> str:
        lines = [f"optimize ({self.mode}): chose {self.chosen!r}, {self.speedup:.2f}x eager"]
        for name, s in sorted(self.seconds.items(), key=lambda kv: kv[1]):
            extra = f", one-time setup {self.setup_seconds[name]:.1f} s" if name in self.setup_seconds else ""
            err = self.max_rel_error.get(name)
            extra += f", max rel. error {err:.1e}" if err else ""
            mb = self.added_memory_mb.get(name)
            extra += f", keeps +{mb:.0f} MB" if mb is not None and mb >= 1 else ""
            lines.append(f"  {name:<22} {s * 1000:9.2f} ms  ({self.seconds['eager'] / s:.2f}x{extra})")
        lines += [f"  {name:<22} skipped: {why}" for name, why in self.skipped.items()]
        if self.not_compared:
            lines.append(f"  outputs of {', '.join(self.not_compared)} not compared with eager: the model has dropout")
        return "\n".join(lines)
