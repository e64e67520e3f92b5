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


def peer_of(row: Row) -> str:
    """Which of our workloads a peer row mirrors ("train" for rows written before sampling and
    FID peers existed)."""
    return row.extra.get("of", "train")


def _compares_with_peer(row: Row) -> bool:
    """Ours with a peer counterpart: train rows, DDPM rows per network call, FID rows."""
    if row.workload == "sample":
        return row.extra.get("sampler") == "ddpm" and row.unit == "img*steps/s"
    return row.workload in ("train", "fid")


def set_peer_ratios(rows: list[Row]) -> None:
    """`vs_peer` of each of our rows with a peer counterpart: its throughput over the fastest
    peer row of the same workload at the same config, batch and dtype; the ratio to each peer
    implementation is in `extra["vs_peers"]`."""
    for row in rows:
        if row.workload == "peer" or row.throughput is None or not _compares_with_peer(row):
            continue
        peers = {}
        for p in rows:
            if (
                p.workload == "peer"
                and p.throughput
                and peer_of(p) == row.workload
                and (p.config, p.batch, p.dtype) == (row.config, row.batch, row.dtype)
            ):
                peers[p.impl] = max(peers.get(p.impl, 0.0), p.throughput)
        row.vs_peer = row.throughput / max(peers.values()) if peers else None
        if peers:
            row.extra["vs_peers"] = {impl: row.throughput / t for impl, t in peers.items()}


@dataclasses.dataclass(frozen=True)
class Goal:
    """Ours >= `ratio` x the fastest peer, for rows of `workload` (and `dtype`, `batch` if set)."""

    workload: str
    ratio: float
    dtype: str | None = None
    batch: int | None = None

    def applies(self, row: Row) -> bool:
        return (
            row.workload == self.workload
            and _compares_with_peer(row)
            and self.dtype in (None, row.dtype)
            and self.batch in (None, row.batch)
        )

    def __str__(self) -> str:
        parts = [self.workload, self.dtype or "", "" if self.batch is None else f"b{self.batch}"]
        return f"{' '.join(p for p in parts if p)} >= {self.ratio:g}x peer"


def parse_goals(text: str) -> list[Goal]:
    """`WORKLOAD[:DTYPE[:BATCH]]=RATIO,...`, e.g. `train:bfloat16:128=2.5,sample=1.4`."""
    goals = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        key, _, ratio = item.partition("=")
        workload, dtype, batch = (key.split(":") + ["", ""])[:3]
        goals.append(Goal(workload, float(ratio), dtype or None, int(batch) if batch else None))
    return goals


def goal_of(row: Row, goals: list[Goal]) -> Goal | None:
    return next((g for g in goals if g.applies(row)), None)


def set_goals(rows: list[Row], goals: list[Goal]) -> list[str]:
    """Marks `extra["goal"]` / `extra["goal_met"]` on our rows and returns one line per row."""
    lines = []
    for row in rows:
        goal = goal_of(row, goals)
        if goal is None or row.workload == "peer":
            continue
        row.extra["goal"] = goal.ratio
        met = None if row.vs_peer is None else row.vs_peer >= goal.ratio
        row.extra["goal_met"] = met
        verdict = {True: "met", False: "MISSED", None: "no peer measured"}[met]
        ratio = "n/a" if row.vs_peer is None else f"{row.vs_peer:.2f}x"
        lines.append(
            f"- goal {goal}: {row.config} {row.dtype} b{row.batch} {row.what}: {ratio}, {verdict}"
        )
    return lines


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
