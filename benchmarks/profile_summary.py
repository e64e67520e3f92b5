"""Top ops of a `jax.profiler` trace, read from its Chrome/Perfetto JSON (no TensorBoard).

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes
`dir/plugins/profile/<run>/perfetto_trace.json.gz` (and `<host>.trace.json.gz`, the same event
format): complete events (`"ph": "X"`, microseconds) on processes and threads named by metadata
events. Which events are "ops":

- GPU/TPU traces (a process named `/device:...`): the `XLA Ops` line of each device (one event
  per HLO op, fusions and custom calls such as cuDNN convolutions included); without one, the
  kernels on the `Stream ...` lines. The kernels are summarised too (`kernels`), by kernel name.
- CPU traces (no device process): the host events that carry an `hlo_op` argument (XLA:CPU's
  thunk executor emits one per op), `end: ...` markers left out.

Time is self time (nested events on a line are subtracted from their parent, so a `while` op does
not count its body twice), summed over every event of a name; `share` is that over the total of
all ops. `kinds` groups names by their stem (`fusion.12` -> `fusion`).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DETAIL_ARGS = ("tf_op", "long_name", "hlo_category", "kernel_details", "hlo_module")


def find_trace(trace_dir: str | Path) -> Path | None:
    """The newest Perfetto/Chrome trace JSON under `trace_dir` (perfetto_trace preferred)."""
    root = Path(trace_dir)
    for pattern in ("perfetto_trace.json.gz", "*.trace.json.gz", "*.trace.json"):
        found = sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def load_events(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    return [e for e in events if isinstance(e, dict) and e.get("ph")]


def _self_times(events: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """(event, self time in us) for complete events on one line: children are subtracted."""
    ordered = sorted(events, key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
    out: list[list] = []
    stack: list[tuple[float, list]] = []  # (end time, [event, self time])
    for e in ordered:
        ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
        while stack and stack[-1][0] <= ts:
            stack.pop()
        item = [e, dur]
        if stack:
            stack[-1][1][1] -= dur
        stack.append((ts + dur, item))
        out.append(item)
    return [(e, max(t, 0.0)) for e, t in out]


def _stem(name: str) -> str:
    return re.sub(r"(\.\d+)+$", "", name.lstrip("%")) or name


def _table(pairs: list[tuple[str, float, dict]], top: int) -> tuple[list[dict], float]:
    total_us = sum(t for _, t, _ in pairs)
    agg: dict[str, list] = {}
    details: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, t, args in pairs:
        a = agg.setdefault(name, [0.0, 0])
        a[0] += t
        a[1] += 1
        for key in DETAIL_ARGS:
            if args.get(key):
                details[name][str(args[key])[:200]] += 1
                break
    ranked = sorted(agg.items(), key=lambda kv: -kv[1][0])[:top]
    rows = []
    for name, (t, count) in ranked:
        row = {
            "name": name,
            "total_ms": t / 1e3,
            "share": t / total_us if total_us else 0.0,
            "count": count,
        }
        if details[name]:
            row["detail"] = details[name].most_common(1)[0][0]
        rows.append(row)
    return rows, total_us


def summarize_events(events: list[dict[str, Any]], top: int = 15) -> dict[str, Any]:
    """`{"source", "total_ms", "ops": [...], "kinds": [...], "kernels": [...]?}` of a trace."""
    processes = {
        e["pid"]: str(e.get("args", {}).get("name", ""))
        for e in events
        if e["ph"] == "M" and e.get("name") == "process_name"
    }
    threads = {
        (e["pid"], e.get("tid")): str(e.get("args", {}).get("name", ""))
        for e in events
        if e["ph"] == "M" and e.get("name") == "thread_name"
    }
    lines: dict[tuple, list] = collections.defaultdict(list)
    for e in events:
        if e["ph"] == "X" and "ts" in e:
            lines[(e["pid"], e.get("tid"))].append(e)
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}

    def pick(keep) -> list[tuple[str, float, dict]]:
        out = []
        for key, evs in lines.items():
            if keep(key):
                for e, t in _self_times(evs):
                    out.append((str(e.get("name", "")), t, e.get("args") or {}))
        return out

    summary: dict[str, Any] = {}
    if devices:
        op_lines = lambda k: k[0] in devices and threads.get(k) == "XLA Ops"  # noqa: E731
        stream_lines = lambda k: k[0] in devices and threads.get(k, "").startswith("Stream")  # noqa: E731
        ops = pick(op_lines)
        kernels = pick(stream_lines)
        source = "device 'XLA Ops' lines" if ops else "device stream lines (kernels)"
        ops = ops or kernels
        if kernels:
            summary["kernels"], _ = _table(kernels, top)
    else:
        ops = [
            (str(e.get("name", "")), t, e.get("args") or {})
            for key, evs in lines.items()
            for e, t in _self_times([e for e in evs if (e.get("args") or {}).get("hlo_op")])
            if not str(e.get("name", "")).startswith("end: ")
        ]
        source = "host events with an hlo_op (XLA:CPU thunks)"
    table, total_us = _table(ops, top)
    kinds, _ = _table([(_stem(n), t, {}) for n, t, _ in ops], top)
    return {"source": source, "total_ms": total_us / 1e3, "ops": table, "kinds": kinds, **summary}


def summarize(trace_dir: str | Path, top: int = 15) -> dict[str, Any]:
    """`summarize_events` of the newest trace under `trace_dir`, plus its path."""
    path = find_trace(trace_dir)
    if path is None:
        return {"error": f"no *.trace.json.gz under {trace_dir}"}
    return {"trace": str(path), **summarize_events(load_events(path), top)}


def format_summary(title: str, summary: dict[str, Any], top: int = 10) -> str:
    """A few Markdown lines: the top ops with their time and share."""
    if "error" in summary:
        return f"{title}: {summary['error']}"
    lines = [
        f"{title}: top ops by self time ({summary['source']}; "
        f"{summary['total_ms']:.1f} ms of ops traced)",
        "",
        "| op | ms | share | count | detail |",
        "|---|---|---|---|---|",
    ]
    for op in summary["ops"][:top]:
        detail = op.get("detail", "").replace("|", "/")[:80]
        lines.append(
            f"| {op['name'][:60]} | {op['total_ms']:.2f} | {100 * op['share']:.1f}% "
            f"| {op['count']} | {detail} |"
        )
    kinds = ", ".join(f"{k['name']} {100 * k['share']:.0f}%" for k in summary["kinds"][:6])
    lines.append(f"\nby kind: {kinds}")
    return "\n".join(lines)
