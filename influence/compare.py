"""Statistics for comparing two models on the same test images, and a cleaned model with random
removals of the same size. Every comparison the app and the CLI report comes from here, so that
"better" is only said with the test that shows it.

* Before/after on the same test set: McNemar's exact test on the paired per-image correctness
  (only the images whose correctness changed count).
* Against random removal: R random removals of the same size; the empirical p-value of the
  cleaned result is (1 + #{random ≤ cleaned}) / (R + 1) (Davison & Hinkley): the chance of doing
  at least this well by removing images at random.
* Both together: Holm's correction for the two p-values.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as _mcnemar
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05


def mcnemar(right_before: np.ndarray, right_after: np.ndarray) -> dict:
    """McNemar's exact test on two models' per-image correctness on the same test images:
    `fixed` images became right, `broken` became wrong; p is two-sided."""
    right_before, right_after = np.asarray(right_before, bool), np.asarray(right_after, bool)
    if right_before.shape != right_after.shape:
        raise ValueError("both models must be scored on the same test images")
    broken = int(np.sum(right_before & ~right_after))
    fixed = int(np.sum(~right_before & right_after))
    table = [[int(np.sum(right_before & right_after)), broken],
             [fixed, int(np.sum(~right_before & ~right_after))]]
    p = float(_mcnemar(table, exact=True).pvalue) if broken + fixed else 1.0
    return {"n": int(right_before.size), "fixed": fixed, "broken": broken, "p": p}


def empirical_p(cleaned_error: float, control_errors) -> float:
    """(1 + #{random ≤ cleaned}) / (R + 1): how often removing as many random images did at
    least as well (NaN without controls)."""
    controls = np.asarray(control_errors, dtype=float)
    if controls.size == 0:
        return float("nan")
    return float((1 + np.sum(controls <= cleaned_error)) / (controls.size + 1))


def holm(p_values) -> list[float]:
    """Holm-corrected p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def images_needed(fixed: int, broken: int, n: int, power: float = 0.8,
                       alpha: float = ALPHA) -> int | None:
    """Roughly how many test images McNemar's test would need to show a difference of this size
    and this share of changed images, with the given power (the normal approximation for paired
    proportions, Connor 1987). None when nothing changed or the changes cancel out."""
    changed = fixed + broken
    if n == 0 or changed == 0 or fixed == broken:
        return None
    share = fixed / changed  # of the changed images, the share that became right
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pairs = ((z_a * 0.5 + z_b * math.sqrt(share * (1 - share))) / (share - 0.5)) ** 2
    return int(math.ceil(pairs * n / changed))


def cleaning_verdict(right_before, right_after, control_errors=()) -> dict:
    """Every figure of one cleaning round: errors before and after, McNemar on the test images,
    where the cleaned model falls among the random removals, the empirical p-value, both
    p-values Holm-corrected, and whether each comparison is significant after correction."""
    test = mcnemar(right_before, right_after)
    before, after = ((1 - float(np.mean(right_before)), 1 - float(np.mean(right_after)))
                     if test["n"] else (float("nan"), float("nan")))
    controls = [float(e) for e in control_errors]
    p_random = empirical_p(after, controls)
    p_test_holm, p_random_holm = holm([test["p"], p_random])
    return {"test_error_before": before, "test_error_after": after, "n_test": test["n"],
            "fixed": test["fixed"], "broken": test["broken"], "p_mcnemar": test["p"],
            "p_mcnemar_holm": p_test_holm, "controls": len(controls),
            "control_errors": controls,
            "better_than_controls": int(sum(after < c for c in controls)),
            "p_random": p_random, "p_random_holm": p_random_holm,
            "significant_vs_before": bool(p_test_holm < ALPHA),
            "better_than_chance": bool(controls) and bool(p_random_holm < ALPHA),
            "test_images_needed": images_needed(test["fixed"], test["broken"],
                                                     test["n"])}
