"""The report of ``dilaserve experiment``: one JSON (config, every run, per rate and policy the live
spread over repeats beside the simulated figures) and PNGs of live vs simulated per policy."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tooling.experiment_metrics import aggregate

PLOTS = (("slo_attainment", "SLO attainment", "attainment_vs_rate.png"),
         ("latency_p50_s", "p50 latency (s), served", "latency_p50_vs_rate.png"))


def points(runs: list[dict], sim: dict[tuple[float, str], dict], requests: dict[float, int]) -> list[dict]:
    """Per rate: each policy's ``live`` (spread over repeats) and ``sim`` figures."""
    live = aggregate(runs)
    out = []
    for rps in sorted({r["rps"] for r in runs}):
        pols = {}
        for (rate, policy), agg in live.items():
            if rate == rps:
                s = sim.get((rps, policy))
                mine = sorted((r for r in runs if (r["rps"], r["policy"]) == (rps, policy)), key=lambda r: r["repeat"])
                pols[policy] = {"live": agg, "sim": s, "gap": gaps(agg, s, [r["live"]["slo_attainment"] for r in mine])}
        out.append({"rps": rps, "requests": requests.get(rps), "policies": dict(sorted(pols.items()))})
    return out


def gaps(live: dict, sim: dict | None, live_by_repeat: list[float | None] | None = None) -> dict:
    """Simulated − live attainment, and simulated p50 latency relative to live (the fidelity figures);
    where each repeat was simulated on its own, also simulated − live attainment repeat by repeat."""
    if sim is None:
        return {}
    att, p50 = live["slo_attainment"]["mean"], live["latency_p50_s"]["mean"]
    s_att, s_p50 = sim.get("slo_attainment"), sim.get("latency_p50_s")
    out = {"attainment": None if att is None or s_att is None else round(s_att - att, 6),
           "latency_p50_rel": None if not p50 or s_p50 is None else round(s_p50 / p50 - 1.0, 6)}
    reps = sim.get("repeats") or []
    if reps and live_by_repeat is not None and len(reps) == len(live_by_repeat):
        out["attainment_by_repeat"] = [None if a is None or r["slo_attainment"] is None else
                                       round(r["slo_attainment"] - a, 6) for r, a in zip(reps, live_by_repeat)]
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2, sort_keys=True) + "\n")
    return path


def plot_metric(report: dict, metric: str, ylabel: str, path: Path) -> Path:
    """Live: mean over repeats with min–max bars (solid); simulated: dashed, same colour."""
    from shared.sim.plots import COLORS, _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for policy in report["config"]["policies"]:
        rows = [(p["rps"], p["policies"][policy]) for p in report["points"] if policy in p["policies"]]
        live = [(x, v["live"][metric]) for x, v in rows if v["live"][metric]["mean"] is not None]
        if live:
            xs, ys = [x for x, _ in live], [s["mean"] for _, s in live]
            err = [[m - s["min"] for m, (_, s) in zip(ys, live)], [s["max"] - m for m, (_, s) in zip(ys, live)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=3, color=COLORS.get(policy),
                        label=f"{policy} live")
        sim = [(x, v["sim"][metric]) for x, v in rows if v["sim"] and v["sim"].get(metric) is not None]
        if sim:
            ax.plot([x for x, _ in sim], [y for _, y in sim], linestyle="--", marker="x", ms=4,
                    color=COLORS.get(policy), label=f"{policy} sim")
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel(ylabel)
    if metric == "slo_attainment":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_metric(report, m, label, out_dir / name) for m, label, name in PLOTS]


def table_lines(report: dict) -> list[str]:
    """Live (mean, min–max) and simulated attainment per rate and policy, for a person."""
    lines = []
    for p in report["points"]:
        cells = []
        for policy, v in p["policies"].items():
            a = v["live"]["slo_attainment"]
            s = (v["sim"] or {}).get("slo_attainment")
            live = "n/a" if a["mean"] is None else f"{a['mean']:.3f} [{a['min']:.3f}–{a['max']:.3f}]"
            cells.append(f"{policy} live {live} sim {'n/a' if s is None else f'{s:.3f}'}")
        lines.append(f"{p['rps']:g} req/s: " + "; ".join(cells))
    return lines

