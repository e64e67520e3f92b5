"""One measured (or skipped) benchmark row, the printed table and the JSON document."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Row:
    """A workload timed `len(seconds)` times; each repeat did `work` units of `unit`.

    `flops_per_unit` is the analytic count (benchmarks.flops); `peak_tflops` the dense peak of
    all devices used for this row's arithmetic, None when unknown (CPUs): MFU is then None.
    """

    workload: str  # train | sample | fid | peer
    config: str
    impl: str  # "jax", "torch eager", "torch compile"
    dtype: str  # compute dtype: float32, bfloat16, float32-strict (FID)
    batch: int
    what: str  # what one repeat is, in words
    unit: str  # "img/s" or "img*steps/s"
    work: float = 0.0
    seconds: list[float] = dataclasses.field(default_factory=list)
    flops_per_unit: float | None = None
    peak_tflops: float | None = None
    device: str = ""
    skipped: str | None = None  # why the row did not run
    vs_peer: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def throughput(self) -> float | None:
        return self.work / self.median_s if self.seconds else None

    @property
    def tflops(self) -> float | None:
        if self.throughput is None or self.flops_per_unit is None:
            return None
        return self.throughput * self.flops_per_unit / 1e12

    @property
    def mfu(self) -> float | None:
        if self.tflops is None or not self.peak_tflops:
            return None
        return self.tflops / self.peak_tflops

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out |= {
            "repeats": len(self.seconds),
            "median_s": self.median_s,
            "throughput": self.throughput,
            "achieved_tflops": self.tflops,
            "mfu": self.mfu,
        }
        return out


def time_repeats(run: Callable[[], Any], repeats: int, sync: Callable[[Any], Any]) -> list[float]:
    """Wall seconds of `repeats` calls of `run`, each ended by `sync(result)` (device sync)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(run())
        seconds.append(time.perf_counter() - start)
    return seconds


def set_peer_ratios(rows: list[Row]) -> None:
    """`vs_peer` of each JAX train row: its throughput over the fastest peer row measured at the
    same config, batch and dtype."""
    for row in rows:
        if row.workload != "train" or row.throughput is None:
            continue
        peers = [
            p.throughput
            for p in rows
            if p.workload == "peer"
            and p.throughput
            and (p.config, p.batch, p.dtype) == (row.config, row.batch, row.dtype)
        ]
        row.vs_peer = row.throughput / max(peers) if peers else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _rate(value: float | None) -> str:
    """1,234.5 for large rates, 3 significant digits for small ones (CPU rows)."""
    return "n/a" if value is None else f"{value:,.1f}" if value >= 100 else f"{value:.3g}"


COLUMNS = (
    "workload",
    "config",
    "impl",
    "dtype",
    "batch",
    "what",
    "median s",
    "throughput",
    "unit",
    "TFLOP/s",
    "MFU",
    "vs peer",
)


def table(rows: list[Row]) -> str:
    """Markdown table; skipped rows say why in the `what` column."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r.skipped:
            cells = [r.workload, r.config, r.impl, r.dtype, str(r.batch), r.skipped]
            cells += ["-"] * (len(COLUMNS) - len(cells))
        else:
            cells = [
                r.workload,
                r.config,
                r.impl,
                r.dtype,
                str(r.batch),
                r.what,
                _fmt(r.median_s, ".4g"),
                _rate(r.throughput),
                r.unit,
                _fmt(r.tflops, ".3g"),
                "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%",
                "n/a" if r.vs_peer is None else f"{r.vs_peer:.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
