"""An upper bound no policy can beat: ``python -m shared.sim.bound`` (docs/simulator.md, "Why not 1.5×").

For a rate sweep point: the executed tokens needed to serve the cheapest 90 % of the window's requests
at one τ (the sim's own commit process: ⌊tps⌋ + Bernoulli per step, capped at the block end, so a block
takes E[steps] ≥ B / tps), against what the cluster can execute by the last deadline (the arrival
window plus one SLO) at its peak token throughput. For a fixed token-weighted mean τ a single τ for
everyone is the cheapest choice (steps per block are convex in τ), and the cheapest 90 % are the
shortest prompts, so if the tokens do not fit, ≥ 0.90 attainment at that mean τ is out of reach.
"""

from __future__ import annotations

import random

from shared.policy.cost_model import CostModel
from shared.policy.step_predictor import StepPredictor
from shared.sim.workload import LengthScaling, load_trace, rescale_arrivals


def steps_per_block(tau: float, block: int = 32, n: int = 20000, seed: int = 0) -> float:
    tps, rng, total = StepPredictor().tokens_per_step(tau), random.Random(seed), 0
    for _ in range(n):
        left = block
        while left > 0:
            k = int(tps) + (1 if rng.random() < tps - int(tps) else 0)
            left -= max(1, min(k, left))
            total += 1
    return total / n


def tokens_needed(rps: float, tau: float, duration_s: float = 120.0, keep: float = 0.9,
                  scaling: LengthScaling = LengthScaling()) -> tuple[int, float]:
    """(requests in the window, executed tokens for the cheapest ``keep`` fraction at ``tau``)."""
    rows = rescale_arrivals(load_trace("azure_conv"), rps, duration_s)
    blocks = -(-scaling.output_len // scaling.block_len)
    reuse = blocks * (steps_per_block(tau, scaling.block_len) - 1) * scaling.block_len
    work = sorted(blocks * (scaling.prompt(r.prompt) + scaling.output_len) + reuse for r in rows)
    return len(rows), sum(work[: -(-int(keep * len(work) * 1000) // 1000)])


def main() -> None:
    cost = CostModel.llada8b_gh200()
    peak = max(cost.throughput("tp1", x) for x in cost.curves["tp1"].xs)  # tokens/s, largest profiled step
    tokens = cost.budget_for("tp1", 0.065)
    budget = cost.throughput("tp1", tokens)
    slo = 5 * 2.253
    for label, tps in (("peak", peak), (f"at the {tokens}-token budget", budget)):
        print(f"capacity by the last deadline ({label}, {tps:.0f} tok/s per TP1): "
              f"{16 * tps * (120 + slo) / 1e6:.1f} M tokens")
    for rps in (75, 95, 100, 105, 112.5, 115):
        for tau in (0.9, 0.75):
            n, need = tokens_needed(rps, tau)
            print(f"--rps {rps:g}: {n} requests; cheapest 90 % at τ {tau}: {need / 1e6:.1f} M tokens")


if __name__ == "__main__":
    main()
