"""Tables and figures from a FlashAttention benchmark record (live or replayed from JSON).

Nothing here measures; every number shown comes from the record passed in.
"""

from __future__ import annotations

from transformer_book import _checks

__all__ = [
    "provenance_summary",
    "correctness_table",
    "throughput_table",
    "plot_forward",
    "plot_forward_backward",
    "plot_ladder",
    "plot_memory",
]

PROVIDER_LABELS = {
    "naive": "naive PyTorch",
    "sdpa_flash": "SDPA (FlashAttention backend)",
    "sdpa_cudnn": "SDPA (cuDNN backend)",
    "ours": "ours (Triton)",
}
_STYLE = {"naive": ("tab:gray", "s"), "sdpa_flash": ("tab:blue", "o"), "sdpa_cudnn": ("tab:green", "^"),
          "ours": ("tab:red", "D")}


def provenance_summary(record: dict) -> str:
    """Where and when the record was measured, in a few lines."""
    p = _part(record, "provenance")
    gpu = p["gpu"]
    smi = p.get("nvidia_smi") or {}
    clocks = (f"SM clock {smi['clocks.sm']} MHz (max {smi['clocks.max.sm']}), memory clock {smi['clocks.mem']} MHz"
              if smi.get("clocks.sm") else "clocks not recorded")
    git = p.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    s = record["settings"]
    runs = {}
    for section, brief in (record.get("section_provenance") or {}).items():
        key = (brief.get("date_utc"), ((brief.get("git") or {}).get("commit") or "unknown")[:12])
        runs.setdefault(key, []).append(section)
    parts = [] if len(runs) <= 1 else [
        "recorded in several runs: " + "; ".join(f"{', '.join(secs)} on {date} at {sha}" for (date, sha), secs in runs.items())]
    return "\n".join([
        f"GPU: {gpu['name']} (compute capability {gpu.get('capability')}, "
        f"{gpu.get('total_memory_bytes', 0) / 2**30:.0f} GiB); {clocks}",
        f"software: torch {p['torch']}, CUDA {p['cuda']}, cuDNN {p.get('cudnn')}, triton {p['triton']}",
        f"measured {p['date_utc']} at commit {commit}; {'quick' if s.get('quick') else 'full'} run, "
        f"{'all sections' if record['complete'] else 'sections ' + ', '.join(record['results'])}; "
        f"timing: {s.get('statistic')} of {s.get('timer')}",
        *parts,
    ])


def _part(record: object, key: str) -> dict:
    """``record[key]`` of a benchmark record (a dict from ``run_flash_benchmark``), checked."""
    _checks.instance("record", record, dict, "benchmark record dict")
    if not isinstance(record.get(key), dict):
        raise ValueError(f"record must hold a {key!r} dict (a record written by run_flash_benchmark), "
                         f"got keys {sorted(record)[:6]}")
    return record[key]


def correctness_table(record: dict) -> str:
    rows = _part(record, "results").get("correctness", [])
    if not rows:
        return "(no correctness section in this record)"
    lines = [f"{'dtype':9} {'D':>4} {'causal':6} | {'max |ours - fp64|  out / dq / dk / dv':44} | "
             f"{'max |SDPA - fp64|  out / dq / dk / dv':44} | ok"]
    for r in rows:
        if r["ours_vs_float64"] is None:
            lines.append(f"{r['dtype']:9} {r['head_dim']:4d} {r['causal']!s:6} | failed: {r.get('error')}")
            continue
        o = " / ".join(f"{r['ours_vs_float64'][k]:.1e}" for k in ("out", "dq", "dk", "dv"))
        t = " / ".join(f"{r['sdpa_vs_float64'][k]:.1e}" for k in ("out", "dq", "dk", "dv"))
        lines.append(f"{r['dtype']:9} {r['head_dim']:4d} {r['causal']!s:6} | {o:44} | {t:44} | {r['passed']}")
    return "\n".join(lines)


def _cell(row):
    return f"{row['tflops']:.0f}" if row["status"] == "ok" else row["status"]


def throughput_table(record: dict, section: str = "forward") -> str:
    """TFLOP/s per provider (columns) for every (dtype, D, causal, N) measured."""
    _checks.one_of("section", section, ("forward", "forward_backward"))
    rows = _part(record, "results").get(section, [])
    if not rows:
        return f"(no {section} section in this record)"
    providers = [p for p in PROVIDER_LABELS if any(r["provider"] == p for r in rows)]
    keys = sorted({(r["dtype"], r["head_dim"], r["causal"], r["seq_len"]) for r in rows})
    table = {(r["dtype"], r["head_dim"], r["causal"], r["seq_len"], r["provider"]): r for r in rows}
    lines = [f"{'dtype':9} {'D':>4} {'causal':6} {'N':>6} | " + " ".join(f"{p:>10}" for p in providers)
             + "   (TFLOP/s)"]
    for key in keys:
        cells = [_cell(table[(*key, p)]) if (*key, p) in table else "-" for p in providers]
        lines.append(f"{key[0]:9} {key[1]:4d} {key[2]!s:6} {key[3]:6d} | " + " ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def plot_forward(record: dict, dtype: str = "float16"):
    """TFLOP/s vs N, one panel per (D, causal), one line per provider. Returns the figure, or
    None when the record has no forward rows for ``dtype``."""
    import matplotlib.pyplot as plt

    rows = [r for r in record["results"].get("forward", []) if r["dtype"] == dtype]
    if not rows:
        return None
    dims = sorted({r["head_dim"] for r in rows})
    causals = sorted({r["causal"] for r in rows})
    fig, axes = plt.subplots(len(dims), len(causals), figsize=(5 * len(causals), 3.2 * len(dims)),
                             squeeze=False, sharey=True)
    for i, d in enumerate(dims):
        for j, causal in enumerate(causals):
            ax = axes[i][j]
            for provider in PROVIDER_LABELS:
                pts = sorted((r["seq_len"], r["tflops"]) for r in rows
                             if r["provider"] == provider and r["head_dim"] == d and r["causal"] == causal
                             and r["status"] == "ok")
                if pts:
                    color, marker = _STYLE[provider]
                    ax.plot(*zip(*pts), marker=marker, color=color, label=PROVIDER_LABELS[provider])
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dtype}, D={d}, {'causal' if causal else 'non-causal'}")
            ax.set_xlabel("sequence length N (B*N fixed)")
            ax.set_ylabel("forward TFLOP/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Forward throughput on {record['provenance']['gpu']['name']}")
    fig.tight_layout()
    return fig


def plot_forward_backward(record: dict):
    """Bars: forward+backward TFLOP/s per provider, one group per (dtype, D, causal)."""
    import matplotlib.pyplot as plt

    rows = record["results"].get("forward_backward", [])
    if not rows:
        return None
    groups = sorted({(r["dtype"], r["head_dim"], r["causal"]) for r in rows})
    providers = [p for p in PROVIDER_LABELS if any(r["provider"] == p for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)) + 2.5, 3.5))
    width = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        xs, ys = [], []
        for g, key in enumerate(groups):
            match = [r for r in rows if (r["dtype"], r["head_dim"], r["causal"]) == key and r["provider"] == provider]
            if match and match[0]["status"] == "ok":
                xs.append(g + i * width)
                ys.append(match[0]["tflops"])
        ax.bar(xs, ys, width, color=_STYLE[provider][0], label=PROVIDER_LABELS[provider])
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{dt}\nD={d}\n{'causal' if c else 'full'}" for dt, d, c in groups], fontsize=8)
    n = rows[0]["seq_len"] if rows else "?"
    ax.set_ylabel("forward + backward TFLOP/s")
    ax.set_title(f"Training step (forward + backward), N = {n}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_ladder(record: dict):
    """Horizontal bars: forward TFLOP/s of each rung, per (D, causal)."""
    import matplotlib.pyplot as plt

    rows = record["results"].get("ladder", [])
    if not rows:
        return None
    groups = sorted({(r["head_dim"], r["causal"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.5), squeeze=False, sharey=True)
    for ax, (d, causal) in zip(axes[0], groups):
        rungs = sorted((r for r in rows if (r["head_dim"], r["causal"]) == (d, causal)), key=lambda r: r["step"])
        values = [r["tflops"] if r["status"] == "ok" else 0.0 for r in rungs]
        ax.barh(range(len(rungs)), values, color="tab:red")
        ax.set_yticks(range(len(rungs)))
        ax.set_yticklabels([r["name"] for r in rungs], fontsize=8)
        ax.invert_yaxis()
        for y, (r, x) in enumerate(zip(rungs, values)):
            ax.text(x, y, f" {x:.0f}" if r["status"] == "ok" else f" {r['status']}", va="center", fontsize=8)
        ax.set_xlabel("forward TFLOP/s")
        ax.set_title(f"N={rungs[0]['seq_len']}, D={d}, {'causal' if causal else 'non-causal'}")
    fig.suptitle("The performance ladder: one optimisation at a time")
    fig.tight_layout()
    return fig


def plot_memory(record: dict):
    """Peak extra memory of one forward pass vs N (log-log); out-of-memory points marked."""
    import matplotlib.pyplot as plt

    rows = record["results"].get("memory", [])
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    top = max([r["peak_bytes"] for r in rows if r["status"] == "ok"] or [1])
    for provider in PROVIDER_LABELS:
        mine = sorted((r for r in rows if r["provider"] == provider), key=lambda r: r["seq_len"])
        if not mine:
            continue
        color, marker = _STYLE[provider]
        ok = [(r["seq_len"], r["peak_bytes"] / 2**20) for r in mine if r["status"] == "ok"]
        if ok:
            ax.plot(*zip(*ok), marker=marker, color=color, label=PROVIDER_LABELS[provider])
        oom = [r["seq_len"] for r in mine if r["status"] == "oom"]
        if oom:
            ax.scatter(oom, [top * 2 / 2**20] * len(oom), marker="x", s=80, color=color,
                       label=f"{PROVIDER_LABELS[provider]}: out of memory")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("peak extra memory (MiB)")
    r0 = rows[0] if rows else {}
    ax.set_title(f"One forward pass, B={r0.get('batch')}, H={r0.get('heads')}, D={r0.get('head_dim')}, {r0.get('dtype')}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
