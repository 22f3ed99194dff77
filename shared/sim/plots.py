"""PNG plots for simulation reports (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.sim.runner import Trace

COLORS = {"fcfs": "#7f7f7f", "balance": "#1f77b4", "tedi": "#ff7f0e", "dilaserve": "#2ca02c"}
STYLES = {"fcfs": "-", "balance": "--", "tedi": "-.", "dilaserve": "-"}  # overlapping curves stay visible


def _style(name: str) -> dict:
    return {"color": COLORS.get(name), "linestyle": STYLES.get(name, "-"), "label": name}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return path


def attainment_curve(report: dict, x_key: str, path: Path, xlabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    pts = report["points"]
    for name in report["config"]["policies"]:
        ax.plot([p[x_key] for p in pts], [p["policies"][name]["slo_attainment"] for p in pts], marker="o",
                ms=3, **_style(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_cdf(raw: dict[str, "Trace"], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, res in raw.items():
        lat = res.latencies
        if lat:
            n = len(lat)
            ax.plot(lat, [(i + 1) / n for i in range(n)], **_style(name))
    ax.set_xlabel("end-to-end latency (s), finished requests")
    ax.set_ylabel("CDF")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def tau_over_time(raw: dict[str, "Trace"], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, res in raw.items():
        if res.tau_timeline:
            ax.plot([t for t, _ in res.tau_timeline], [v for _, v in res.tau_timeline], lw=1.5,
                    **_style(name))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean τ of running requests")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def reference_index(report: dict) -> int:
    """The point where fcfs attains closest to 0.5 (the interesting regime); else the middle point."""
    pts = report["points"]
    if "fcfs" in report["config"]["policies"] and pts:
        return min(range(len(pts)), key=lambda i: abs((pts[i]["policies"]["fcfs"]["slo_attainment"] or 0) - 0.5))
    return len(pts) // 2


def plot_all(report: dict, raws: list[dict[str, "Trace"]], out_dir: str | Path, sweep: str | None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if sweep == "rps":
        paths.append(attainment_curve(report, "rps", out / "attainment_vs_rate.png", "request rate (req/s)"))
    if sweep == "slo":
        paths.append(attainment_curve(report, "slo_scale", out / "attainment_vs_slo.png", "SLO scale (× base latency)"))
    if raws:
        i = reference_index(report)
        p = report["points"][i]
        title = f"rps {p['rps']:.1f}, SLO scale {p['slo_scale']:g}"
        paths.append(latency_cdf(raws[i], out / "latency_cdf.png", title))
        paths.append(tau_over_time(raws[i], out / "tau_over_time.png", title))
    return paths
