"""Paired comparison of two ablation variants over seeds: t interval, verdict, detectable effect.

The same training seed gives every variant the same initial weights (where shapes allow), the
same data order and the same augmentation stream, so variant seed k and `full` seed k are a
pair; the difference ``variant - full`` of each pair removes what the seed does to both. Over
the n seeds present in both variants, the mean paired difference has the two-sided
``1 - ALPHA`` Student t interval ``mean ± t_{1-α/2, n-1} · s_d / sqrt(n)`` (s_d: sample standard
deviation of the differences, ddof 1).

Minimal detectable effect (MDE): the smallest true mean difference that this paired t test
(two-sided ALPHA, n seeds) finds with probability POWER, for a standard deviation s_d of the
differences. :func:`mde` solves the exact power equation with the noncentral t distribution,
``P(|T'| > t_{1-α/2, n-1}) = POWER`` for ``T' ~ nct(n - 1, δ sqrt(n) / s_d)``;
:func:`mde_approx` is the textbook formula ``(t_{1-α/2, n-1} + t_{1-β, n-1}) · s_d / sqrt(n)``,
which is a few percent too small at n = 3 (3.10 against 3.26 s_d) and converges to it.

Units are those of the inputs (percentage points for retrieval metrics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

ALPHA = 0.05        # two-sided significance level of every interval and of the MDE
POWER = 0.80        # probability that the design detects an effect of size MDE
MIN_PAIRS = 2       # pairs below which s_d, an interval and a verdict do not exist

HELPS = "helps"                      # variant lower than full, interval below 0
HURTS = "hurts"                      # variant higher than full, interval above 0
UNCLEAR = "cannot be told apart"     # interval includes 0
SINGLE = "single seed: a difference, not a significance"
NO_PAIR = "no seed in common: not compared"


@dataclass(frozen=True)
class PairedDifference:
    """``variant - reference`` over the seeds both have.

    seeds: the paired seeds, in the variant's order; differences: one per paired seed;
    mean: their mean (None without a pair); sd: their sample standard deviation (None below
    MIN_PAIRS); low / high: the two-sided 1 - ALPHA t interval of the mean (None below
    MIN_PAIRS); only_variant / only_reference: seeds dropped because the other side lacks them.
    """

    seeds: list[int]
    differences: list[float]
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None
    only_variant: list[int]
    only_reference: list[int]

    @property
    def n(self) -> int:
        return len(self.differences)

    def as_dict(self) -> dict:
        return {"n": self.n, "seeds": self.seeds, "differences": self.differences,
                "mean": self.mean, "sd": self.sd, "ci_low": self.low, "ci_high": self.high}


def t_quantile(q: float, df: int) -> float:
    """The q quantile of Student's t with ``df`` degrees of freedom (scipy.stats.t.ppf)."""
    from scipy import stats
    return float(stats.t.ppf(q, df))


def t_interval(differences: Sequence[float], alpha: float = ALPHA
               ) -> tuple[float, float, float, float]:
    """``(mean, sd, low, high)``: mean of ``differences``, their sample sd (ddof 1) and the
    two-sided ``1 - alpha`` t interval with n - 1 degrees of freedom.

    Raises ValueError below MIN_PAIRS values (one value has no spread to estimate).
    """
    n = len(differences)
    if n < MIN_PAIRS:
        raise ValueError(f"a t interval needs at least {MIN_PAIRS} paired values, got {n}")
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def paired_difference(variant_runs: Sequence[float], variant_seeds: Sequence[int],
                      reference_runs: Sequence[float], reference_seeds: Sequence[int],
                      alpha: float = ALPHA) -> PairedDifference:
    """Pair ``variant_runs[i]`` (seed ``variant_seeds[i]``) with the reference run of the same
    seed; a seed present on one side only is dropped and named in ``only_variant`` /
    ``only_reference``.

    Raises ValueError when a runs list and its seeds list differ in length or repeat a seed.
    """
    for runs, seeds in ((variant_runs, variant_seeds), (reference_runs, reference_seeds)):
        if len(runs) != len(seeds):
            raise ValueError(f"{len(runs)} runs but {len(seeds)} seeds ({list(seeds)})")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"repeated seed in {list(seeds)}")
    ref = dict(zip(reference_seeds, reference_runs))
    mine = set(variant_seeds)
    pairs = [(s, float(v) - float(ref[s])) for s, v in zip(variant_seeds, variant_runs) if s in ref]
    seeds = [s for s, _ in pairs]
    diffs = [d for _, d in pairs]
    mean = sd = low = high = None
    if len(diffs) >= MIN_PAIRS:
        mean, sd, low, high = t_interval(diffs, alpha)
    elif diffs:
        mean = diffs[0]
    return PairedDifference(seeds, diffs, mean, sd, low, high,
                            only_variant=[s for s in variant_seeds if s not in ref],
                            only_reference=[s for s in reference_seeds if s not in mine])


def verdict(diff: PairedDifference) -> str:
    """HELPS when the whole interval is below 0 (removing or changing the component lowers the
    metric), HURTS when it is above 0, UNCLEAR when it includes 0; SINGLE for one pair and
    NO_PAIR for none."""
    if diff.n == 0:
        return NO_PAIR
    if diff.low is None:
        return SINGLE
    if diff.high < 0:
        return HELPS
    if diff.low > 0:
        return HURTS
    return UNCLEAR


def pooled_sd(diffs: Sequence[PairedDifference]) -> tuple[float | None, int]:
    """``(s, df)``: the pooled standard deviation of the paired differences of several variants,
    ``s² = Σ (n_v - 1) s_v² / Σ (n_v - 1)`` over those with at least MIN_PAIRS pairs, and its
    degrees of freedom Σ (n_v - 1); ``(None, 0)`` when none has."""
    usable = [d for d in diffs if d.sd is not None]
    df = sum(d.n - 1 for d in usable)
    if not df:
        return None, 0
    return math.sqrt(sum((d.n - 1) * d.sd ** 2 for d in usable) / df), df


def mde_approx(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """``(t_{1-α/2, n-1} + t_{power, n-1}) · sd / sqrt(n)``. Raises ValueError for n < 2."""
    if n < MIN_PAIRS:
        raise ValueError(f"a detectable effect needs at least {MIN_PAIRS} seeds, got {n}")
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def power_at(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Probability that the two-sided paired t test over n seeds rejects 0 when the true mean
    difference is ``effect`` and the differences have standard deviation ``sd`` (> 0)."""
    from scipy import stats
    df = n - 1
    crit = t_quantile(1 - alpha / 2, df)
    nc = effect * math.sqrt(n) / sd
    lower = float(stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower)


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The exact minimal detectable effect: the ``effect`` where :func:`power_at` equals
    ``power`` (solved by Brent's method in units of sd). 0 for sd = 0.

    Raises ValueError for n < 2.
    """
    from scipy import optimize
    if n < MIN_PAIRS:
        raise ValueError(f"a detectable effect needs at least {MIN_PAIRS} seeds, got {n}")
    if sd == 0:
        return 0.0
    guess = mde_approx(1.0, n, alpha, power)
    # power grows with the effect; the exact answer lies near the formula's (above it for
    # small n, a hair below for large n), well inside [0.5x, 4x]
    unit = optimize.brentq(lambda e: power_at(e, 1.0, n, alpha) - power, 0.5 * guess, 4 * guess,
                           xtol=1e-10)
    return unit * sd


def compare_by_seed(table: dict, reference: str, metrics: Sequence[str], alpha: float = ALPHA
                    ) -> dict[str, dict[str, PairedDifference]]:
    """``{variant: {metric: PairedDifference}}`` of every variant of ``table`` but ``reference``,
    paired with it by seed. ``table``: ``{variant: {metric: {"runs", "seeds", ...}}}``.

    Raises ValueError when ``reference`` is not in ``table``.
    """
    if reference not in table:
        raise ValueError(f"the reference variant '{reference}' has no results")
    ref = table[reference]
    return {variant: {m: paired_difference(cells[m]["runs"], cells[m]["seeds"], ref[m]["runs"],
                                           ref[m]["seeds"], alpha) for m in metrics}
            for variant, cells in table.items() if variant != reference}


def design_mde(diffs: Sequence[PairedDifference], alpha: float = ALPHA, power: float = POWER
               ) -> dict:
    """The minimal detectable effect of a design whose comparisons are ``diffs`` (one metric,
    one PairedDifference per variant), and how it was computed.

    s_d is :func:`pooled_sd` over the variants (one seed-noise estimate from all of them, with
    more degrees of freedom than any single variant's); n is the smallest number of paired seeds
    among them, so the MDE holds for every comparison of the report. Returns ``{"value" (exact,
    :func:`mde`), "approx" (:func:`mde_approx`), "sd", "sd_df", "n_seeds", "n_variants", "alpha",
    "power"}``, with ``value``, ``approx``, ``sd`` and ``n_seeds`` None when no variant has
    MIN_PAIRS paired seeds.
    """
    usable = [d for d in diffs if d.sd is not None]
    sd, df = pooled_sd(usable)
    n = min((d.n for d in usable), default=None)
    out = {"value": None, "approx": None, "sd": sd, "sd_df": df, "n_seeds": n,
           "n_variants": len(usable), "alpha": alpha, "power": power}
    if sd is not None:
        out["value"] = mde(sd, n, alpha, power)
        out["approx"] = mde_approx(sd, n, alpha, power)
    return out
