"""`countdrift trace stats`: what a traffic engineer checks of a trace, so
that synthetic traffic can be matched to a real log: rates per kind and
their per-second peaks, group sizes, conversations per user, and read
delays (from the last delivery to the conversation before the read)."""
from __future__ import annotations

import numpy as np

from sim.traffic import BADGE, DELIVER, LOGIN, READ, Trace

KINDS = (("deliver", DELIVER), ("open", READ), ("badge", BADGE), ("login", LOGIN))
QUANTILES = (0.5, 0.9, 0.99)


def _spread(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"count": 0}
    return {"count": int(len(values)), "mean": round(float(values.mean()), 4),
            **{f"p{int(q * 100)}": round(float(np.quantile(values, q)), 4) for q in QUANTILES},
            "max": round(float(values.max()), 4)}


def read_delays(trace: Trace) -> np.ndarray:
    """Seconds from the last delivery to a conversation to each read of it
    (reads before any delivery left out)."""
    deliver, read = trace.kind == DELIVER, trace.kind == READ
    order = np.lexsort((trace.t[deliver], trace.conv[deliver]))
    convs, times = trace.conv[deliver][order], trace.t[deliver][order]
    starts = np.searchsorted(convs, trace.conv[read], side="left")
    ends = np.searchsorted(convs, trace.conv[read], side="right")
    delays = []
    for start, end, moment in zip(starts.tolist(), ends.tolist(), trace.t[read].tolist()):
        at = start + int(np.searchsorted(times[start:end], moment, side="right")) - 1
        if at >= start:
            delays.append(moment - times[at])
    return np.array(delays)


def trace_stats(trace: Trace) -> dict:
    span = float(trace.t[-1] - trace.t[0]) if len(trace.t) else 0.0
    seconds = np.floor(trace.t - trace.t[0]).astype(np.int64) if len(trace.t) else np.array([], np.int64)
    rates = {}
    for name, code in KINDS:
        chosen = seconds[trace.kind == code]
        per_second = np.bincount(chosen) if len(chosen) else np.array([0])
        rates[name] = {"count": int(len(chosen)), "per_s": round(len(chosen) / span, 3) if span else 0.0,
                       "peak_per_s": int(per_second.max()), "p99_per_s": float(np.quantile(per_second, 0.99))}
    sizes = np.diff(trace.conv_offsets)
    per_user = np.bincount(trace.conv_members, minlength=trace.users)
    return {"users": trace.users, "conversations": trace.conversations, "span_s": round(span, 3),
            "operations": int(len(trace.t)), "deliveries": trace.deliveries(), "rates": rates,
            "group_sizes": _spread(sizes[sizes > 2].astype(float)), "one_to_one": int((sizes == 2).sum()),
            "conversations_per_user": _spread(per_user.astype(float)),
            "read_delay_s": _spread(read_delays(trace))}


def format_trace_stats(stats: dict) -> str:
    lines = [f"{stats['users']:,} users, {stats['conversations']:,} conversations ({stats['one_to_one']:,} 1:1), "
             f"{stats['operations']:,} operations over {stats['span_s']:,} s, {stats['deliveries']:,} deliveries",
             "", f"{'kind':<10}{'count':>12}{'per s':>12}{'peak / s':>12}{'p99 / s':>12}"]
    for name, rate in stats["rates"].items():
        lines.append(f"{name:<10}{rate['count']:>12,}{rate['per_s']:>12,.1f}{rate['peak_per_s']:>12,}"
                     f"{rate['p99_per_s']:>12,.0f}")
    lines.append("")
    lines.append(f"{'distribution':<26}{'count':>10}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
    for label, key in (("group size (members)", "group_sizes"), ("conversations per user", "conversations_per_user"),
                       ("read delay (s)", "read_delay_s")):
        spread = stats[key]
        if not spread["count"]:
            lines.append(f"{label:<26}{0:>10}")
            continue
        lines.append(f"{label:<26}{spread['count']:>10,}" + "".join(f"{spread[column]:>10,.3g}" for column in
                                                                  ("mean", "p50", "p90", "p99", "max")))
    return "\n".join(lines)
