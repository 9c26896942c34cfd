"""Plot benchmark records: for each case, grouped bars of the median time per implementation.

    python benchmarks/plot.py results/gmm_em_cpu.json [more.json ...] [-o out.png]

Reads the JSON lists that ``--json`` writes (see ``harness.Record``: ``bench``, ``impl``,
``device``, ``params``, ``median_s``, ``min_s``, ``max_s`` and extras) and draws one panel per
(bench, device): a log-scale time axis, min/max error bars, and a black dash at ``limit_s`` (the
memory or compute bound) where a record has one. Works for any bench: cases are told apart by
their ``params``; a parameter fixed by the implementation (``dtype`` float64 for scikit-learn,
say) goes in the legend instead, so that it does not split one case into two.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

Record = dict[str, Any]


def load_records(paths: Sequence[Path]) -> list[Record]:
    """All records of the given JSON files, in order."""
    records: list[Record] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of benchmark records")
        for record in data:
            missing = {"bench", "impl", "device", "params", "median_s", "min_s", "max_s"} - set(record)
            if missing:
                raise ValueError(f"{path}: a record lacks {sorted(missing)}")
        records += data
    return records


def unique(values: Sequence[Any]) -> list[Any]:
    """``values`` without repeats, in order of first appearance."""
    return list(dict.fromkeys(values))


def impl_keys(records: Sequence[Record]) -> list[str]:
    """Parameters that vary only with the implementation: one value per impl, not all equal."""
    keys = unique([k for r in records for k in r["params"]])
    out = []
    for key in keys:
        per_impl: dict[str, set[str]] = {}
        for r in records:
            per_impl.setdefault(r["impl"], set()).add(repr(r["params"].get(key)))
        if all(len(v) == 1 for v in per_impl.values()) and len(set.union(*per_impl.values())) > 1:
            out.append(key)
    return out


def case_key(record: Record, by_impl: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """The record's parameters less those fixed by its implementation: which case it measures."""
    hashable = (str, int, float, bool, type(None))
    return tuple((k, v if isinstance(v, hashable) else json.dumps(v)) for k, v in record["params"].items()
                 if k not in by_impl)


def n_cases(records: Sequence[Record]) -> int:
    by_impl = impl_keys(records)
    return len(unique([case_key(r, by_impl) for r in records]))


def format_param(key: str, value: Any) -> str:
    """``pixels`` for a string value, ``K=10`` otherwise."""
    return value if isinstance(value, str) else f"{key}={value}"


def format_seconds(seconds: float, _pos: Any = None) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def machine_line(records: Sequence[Record]) -> str:
    """Processor (GPU where there is one) and date(s) of the measurements."""
    machines = [r.get("machine") or {} for r in records]
    names = [m.get("gpu") or " ".join(str(m[k]) for k in ("cpu", "isa", "kernel_isa") if m.get(k)) for m in machines]
    hardware = unique([name for name in names if name])
    dates = unique([m["date"] for m in machines if "date" in m])
    return ", ".join(str(x) for x in hardware + dates)


def draw_bar(ax: Axes, x: float, width: float, record: Record, color: str, label: str | None) -> None:
    """One record: bar at the median, error bar from min to max, its time, and its limit_s dash."""
    median = record["median_s"]
    ax.bar(x, median, width, color=color, edgecolor="black", linewidth=0.5, label=label)
    ax.errorbar(x, median, yerr=[[median - record["min_s"]], [record["max_s"] - median]],
                fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.annotate(format_seconds(median), (x, record["max_s"]), xytext=(0, 3), textcoords="offset points",
                ha="center", va="bottom", fontsize=7, rotation=90)
    if record.get("limit_s"):
        ax.hlines(record["limit_s"], x - width / 2, x + width / 2, colors="black", linewidths=2,
                  label="_limit", zorder=3)


def plot_panel(ax: Axes, records: Sequence[Record]) -> None:
    """Grouped bars of one (bench, device): x = case, one bar per impl, log time axis."""
    by_impl = impl_keys(records)
    cases = unique([case_key(r, by_impl) for r in records])
    impls = unique([r["impl"] for r in records])
    width = 0.8 / len(impls)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, impl in enumerate(impls):
        mine = [r for r in records if r["impl"] == impl]
        extra = ", ".join(format_param(k, mine[0]["params"][k]) for k in by_impl if k in mine[0]["params"])
        for n, r in enumerate(mine):
            x = cases.index(case_key(r, by_impl)) - 0.4 + (j + 0.5) * width
            label = (f"{impl} ({extra})" if extra else impl) if n == 0 else None
            draw_bar(ax, x, width, r, colors[j % len(colors)], label)
    finish_axes(ax, records, cases)


def finish_axes(ax: Axes, records: Sequence[Record], cases: list[tuple[tuple[str, Any], ...]]) -> None:
    """Case labels (the parameters that vary), log axis in seconds, legend, title."""
    fixed = [kv for kv in cases[0] if all(kv in c for c in cases)]  # shown once, in the title
    labels = [" ".join(format_param(k, v) for k, v in c if (k, v) not in fixed) or "all" for c in cases]
    rotation, align = (20, "right") if len(cases) > 4 else (0, "center")
    ax.set_xticks(range(len(cases)), labels, rotation=rotation, ha=align)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(format_seconds))
    ax.set_ylabel("median time (min-max)")
    limits = [r["limit_s"] for r in records if r.get("limit_s")]
    ax.set_ylim(min([r["min_s"] for r in records] + limits) / 2, max(r["max_s"] for r in records) * 8)
    ax.grid(axis="y", which="major", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if limits:
        handles.append(Line2D([], [], color="black", linewidth=2))
        names.append("limit_s (bound)")
    ax.legend(handles, names, fontsize=8, loc="upper left", ncols=min(len(names), 4))
    title = f"{records[0]['bench']} on {records[0]['device']} ({machine_line(records)})"
    ax.set_title(title + "\n" + " ".join(format_param(k, v) for k, v in fixed), fontsize=10)


def plot(records: Sequence[Record], out: Path) -> None:
    """One panel per (bench, device), stacked, written to ``out`` as PNG."""
    keys = unique([(r["bench"], r["device"]) for r in records])
    groups = [[r for r in records if (r["bench"], r["device"]) == key] for key in keys]
    widest = max(n_cases(g) for g in groups)
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(6.0, 1.6 * widest + 2), 4.5 * len(groups)),
                             squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        plot_panel(ax, group)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+", help="benchmark JSON files (lists of records)")
    parser.add_argument("-o", "--out", type=Path, help="PNG to write (default: the first JSON with .png)")
    args = parser.parse_args(argv)
    records = load_records(args.json)
    if not records:
        parser.error("no records in the given files")
    out = args.out or args.json[0].with_suffix(".png")
    plot(records, out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
