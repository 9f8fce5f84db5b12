"""Statistics for comparing two models on the same test images, and a cleaned model with random
cleaning rounds of the same size. Every comparison the app and the CLI report comes from here, so
that "better" is only said with the tests that show it.

A cleaning round makes two claims, each tested at α = 0.05:

* **Better than before** (same test images before and after): McNemar's exact test on the
  paired per-image correctness (only the images whose answer changed count), two-sided; the
  claim needs p < α and more images fixed than broken.
* **Better than random**: R random rounds of the same size (influence.cleaning: as many random
  removals, as many random fixes of images the label check flags). Two p-values of the cleaned
  test error e against the controls' errors e_1..e_R:
    - empirical: (1 + #{e_r ≤ e}) / (R + 1) (Davison & Hinkley 1997): free of assumptions, but
      never below 1/(R + 1), so R = 20 controls reach 0.048 at best and any correction for
      several rounds makes it unreachable (smallest_empirical_p, controls_needed);
    - prediction interval: is e lower than a *new* draw from the controls' distribution?
      With the controls' mean m and standard deviation s, t = (m − e) / (s·√(1 + 1/R)) follows
      Student's t with R − 1 degrees of freedom if random rounds' errors are normal; p is
      one-sided.
  **The verdict uses the prediction-interval p**: it uses how far the cleaned error lies from
  the controls, not only their order, so it can pass with the default 20 controls even after
  the correction for rounds. Its assumption is mild here: a test error is a mean over hundreds
  of test images. Where it cannot be computed (fewer than 2 controls, or all controls gave the
  same error: no spread to measure) the verdict falls back to the empirical p. Both are kept.

The sentence "this round made the model better" claims both at once. That is an intersection-
union test (Berger 1982): its null hypothesis is the union of the two nulls, rejected only when
each is rejected at α, so its p-value is the larger of the two and no Holm correction is needed.
Each claim keeps its own result as well.

Every cleaning round compares with the same test images again, and a user may keep the round
that happened to look best. The correction is Bonferroni on the number of rounds compared on
this data set's test images: every p-value of a round is multiplied by that count (for_rounds).
Bonferroni rather than Holm over the rounds' p-values because it needs only the count: a round's
verdict then depends on its own figures and how many rounds were tried, never on how the other
rounds came out, and it can be said in one sentence. Holm multiplies the smallest of the
rounds' p-values by the count as well and gains only for the others, little over a handful of
rounds. The count is the number of rounds so far (not the round's index): the verdict of an
early round is restated with today's count, since the later rounds looked at the same test
images.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as _mcnemar
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
POWER = 0.8  # for images_needed
INTERVAL, EMPIRICAL = "prediction interval", "empirical"  # the test against random rounds


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


# --- against random rounds of the same size -----------------------------------------------------
def empirical_p(cleaned_error: float, control_errors) -> float:
    """(1 + #{random ≤ cleaned}) / (R + 1): how often the random rounds did at least as well
    (NaN without controls)."""
    controls = np.asarray(control_errors, dtype=float)
    if controls.size == 0:
        return float("nan")
    return float((1 + np.sum(controls <= cleaned_error)) / (controls.size + 1))


def smallest_empirical_p(controls: int) -> float:
    """The smallest empirical p that R random controls can give: 1 / (R + 1)."""
    return 1 / (int(controls) + 1)


def controls_needed(alpha: float = ALPHA) -> int:
    """The fewest random controls R whose smallest empirical p, 1 / (R + 1), is below `alpha`
    (20 for 0.05; 40 for 0.05 over 2 rounds)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    r = math.floor(1 / alpha)
    while smallest_empirical_p(r) >= alpha:  # guard the floor against rounding
        r += 1
    while r > 1 and smallest_empirical_p(r - 1) < alpha:
        r -= 1
    return r


def interval_p(cleaned_error: float, control_errors) -> float:
    """The prediction-interval p: is the cleaned error below a new draw from the controls'
    distribution? t = (mean − cleaned) / (s·√(1 + 1/R)), one-sided, t with R − 1 degrees of
    freedom (s: the controls' sample standard deviation). NaN with fewer than 2 controls or
    when every control gave the same error (no spread)."""
    controls = np.asarray(control_errors, dtype=float)
    r = controls.size
    if r < 2 or np.ptp(controls) == 0:
        return float("nan")
    s = float(np.std(controls, ddof=1))
    t = (float(np.mean(controls)) - cleaned_error) / (s * math.sqrt(1 + 1 / r))
    return float(stats.t.sf(t, r - 1))


def random_p(cleaned_error: float, control_errors) -> tuple[float, str | None]:
    """The p-value the verdict uses against the random controls and the test it comes from:
    the prediction interval where it can be computed, else the empirical p (None, NaN without
    controls)."""
    p = interval_p(cleaned_error, control_errors)
    if not math.isnan(p):
        return p, INTERVAL
    p = empirical_p(cleaned_error, control_errors)
    return p, (None if math.isnan(p) else EMPIRICAL)


# --- many comparisons ----------------------------------------------------------------------------
def holm(p_values) -> list[float]:
    """Holm-corrected p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def for_rounds(p: float, rounds: int) -> float:
    """A round's p-value corrected for the `rounds` cleaning rounds compared on the same test
    images (Bonferroni: min(1, rounds · p); see the module's docstring)."""
    if int(rounds) < 1:
        raise ValueError("the number of rounds compared must be 1 or more")
    return float(min(1.0, p * int(rounds))) if not math.isnan(p) else float("nan")


def images_needed(fixed: int, broken: int, n: int, power: float = POWER,
                  alpha: float = ALPHA) -> int | None:
    """How many test images McNemar's test (two-sided, level `alpha`) would need to show a
    change of this size with the given power: Connor (1987, Biometrics 43:207, p. 209),

        n = [z_{1−α/2}·√ψ + z_{1−β}·√(ψ − δ²)]² / δ²,

    ψ = (fixed + broken) / n the share of test images whose answer changed (the discordant
    proportion), δ = (fixed − broken) / n the difference of the two discordant proportions,
    1 − β the power. The formula is for the asymptotic McNemar test; the exact test the verdict
    uses is a little more conservative (about 0.78 instead of 0.8 at a few hundred images).
    None when no test image or no net change."""
    if n <= 0 or fixed == broken:
        return None
    psi, delta = (fixed + broken) / n, (fixed - broken) / n
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    needed = (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - delta ** 2)) ** 2 / delta ** 2
    return int(math.ceil(needed - 1e-9))


# --- the verdict of one cleaning round ---------------------------------------------------------
def cleaning_verdict(right_before, right_after, control_errors=(), rounds: int = 1,
                     right_removed_instead=None, removed: int = 0, relabelled: int = 0) -> dict:
    """Every figure of one cleaning round, its claims and their sentences.

    right_before, right_after: per test image, was the model right before / after the round;
    control_errors: the test errors of the random rounds of the same size; rounds: the number
    of cleaning rounds compared on these test images (for_rounds); right_removed_instead: per
    test image, was the model right when the round's fixed images were removed instead of fixed
    (a round with fixes); removed, relabelled: the round's size, for the sentences.
    The keys are listed in VERDICT_KEYS; verdict_for_rounds restates a kept verdict with
    another round count."""
    test = mcnemar(right_before, right_after)
    before, after = ((1 - float(np.mean(right_before)), 1 - float(np.mean(right_after)))
                     if test["n"] else (float("nan"), float("nan")))
    v = {"n_test": test["n"], "test_error_before": before, "test_error_after": after,
         "fixed": test["fixed"], "broken": test["broken"], "p_mcnemar": test["p"],
         "removed": int(removed), "relabelled": int(relabelled),
         "control_errors": [float(e) for e in control_errors],
         "remove_instead_error": None, "remove_instead_fixed": None,
         "remove_instead_broken": None, "p_remove_instead": None}
    if right_removed_instead is not None:
        instead = mcnemar(right_removed_instead, right_after)  # fixing against removing them
        v.update(remove_instead_error=1 - float(np.mean(right_removed_instead))
                 if instead["n"] else float("nan"), remove_instead_fixed=instead["fixed"],
                 remove_instead_broken=instead["broken"], p_remove_instead=instead["p"])
    return verdict_for_rounds(v, rounds)


def verdict_for_rounds(v: dict, rounds: int = 1) -> dict:
    """The verdict `v` (cleaning_verdict, or one kept from before these keys existed: it needs
    n_test, test_error_before/after, fixed, broken, p_mcnemar and control_errors) with every
    figure that depends on the number of rounds compared on these test images recomputed: the
    corrected p-values, the claims, the images needed and the sentences. The pages call it with
    the count of rounds done on the data set's test images so far."""
    v = dict(v)
    rounds = int(rounds)
    alpha_round = ALPHA / max(rounds, 1)
    controls = [float(e) for e in v.get("control_errors") or []]
    after, n = v["test_error_after"], v["n_test"]
    mean = float(np.mean(controls)) if controls else float("nan")
    p_random, test_used = random_p(after, controls) if n else (float("nan"), None)
    p_before = for_rounds(v["p_mcnemar"], rounds)
    p_vs_random = for_rounds(p_random, rounds)
    better_than_before = bool(n) and v["fixed"] > v["broken"] and p_before < ALPHA
    better_than_random = test_used is not None and after < mean and p_vs_random < ALPHA
    v.update(
        rounds=rounds, alpha=ALPHA, alpha_round=alpha_round,
        controls=len(controls), control_errors=controls, control_mean=mean,
        control_sd=float(np.std(controls, ddof=1)) if len(controls) > 1 else float("nan"),
        better_than_controls=int(sum(after < c for c in controls)),
        p_random_empirical=empirical_p(after, controls),
        p_random_interval=interval_p(after, controls),
        random_test=test_used, smallest_empirical_p=smallest_empirical_p(len(controls)),
        controls_needed=controls_needed(alpha_round),
        p_before=p_before, better_than_before=better_than_before,
        p_vs_random=p_vs_random, better_than_random=better_than_random,
        p_better=max(p_before, p_vs_random) if not math.isnan(p_vs_random) else float("nan"),
        better=better_than_before and better_than_random,
        test_images_needed=images_needed(v["fixed"], v["broken"], n, alpha=alpha_round),
        p_fix_vs_remove=None, fixing_beats_removing=None)
    if v.get("p_remove_instead") is not None:
        v["p_fix_vs_remove"] = for_rounds(v["p_remove_instead"], rounds)
        v["fixing_beats_removing"] = bool(v["remove_instead_fixed"] > v["remove_instead_broken"]
                                          and v["p_fix_vs_remove"] < ALPHA)
    # the names page 4 and the CLI read before the claims had their own keys
    v.update(p_random=v["p_random_empirical"], p_mcnemar_holm=p_before,
             p_random_holm=p_vs_random, significant_vs_before=better_than_before,
             better_than_chance=better_than_random)
    v["sentence"], v["details"] = headline(v), details(v)
    return v


VERDICT_KEYS = (
    # the round's figures
    "n_test", "test_error_before", "test_error_after", "fixed", "broken", "p_mcnemar",
    "removed", "relabelled", "controls", "control_errors", "control_mean", "control_sd",
    "better_than_controls", "p_random_empirical", "p_random_interval", "random_test",
    "smallest_empirical_p", "remove_instead_error", "remove_instead_fixed",
    "remove_instead_broken", "p_remove_instead",
    # what depends on the rounds compared (verdict_for_rounds)
    "rounds", "alpha", "alpha_round", "controls_needed", "p_before", "better_than_before",
    "p_vs_random", "better_than_random", "p_better", "better", "test_images_needed",
    "p_fix_vs_remove", "fixing_beats_removing", "sentence", "details",
    # older names of the same figures
    "p_random", "p_mcnemar_holm", "p_random_holm", "significant_vs_before", "better_than_chance")


# --- in words ----------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x:.2%}"


def p_text(p: float) -> str:
    """A p-value as the sentences show it."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def random_way(v: dict) -> str:
    """What the random rounds did, in words."""
    removed, relabelled = v.get("removed", 0), v.get("relabelled", 0)
    if not relabelled:
        return "removing as many random images"
    fix = f"fixing {relabelled} random images the label check flags"
    return f"{fix} and removing {removed} random ones" if removed else fix


def headline(v: dict) -> str:
    """The round's result in one plain sentence; "better" only when both claims pass."""
    if not v["n_test"]:
        return "There are no test images, so nothing can be said about this round."
    before, after, n = _pct(v["test_error_before"]), _pct(v["test_error_after"]), v["n_test"]
    went = (f"the test error fell from {before} to {after}" if v["fixed"] > v["broken"] else
            f"the test error rose from {before} to {after}" if v["fixed"] < v["broken"] else
            f"the test error stayed at {before}")
    randomly = random_way(v)
    if v["better"]:
        return (f"This round made the model better: {went}, too large a change to be chance, "
                f"and {randomly} instead did worse ({_pct(v['control_mean'])} on average).")
    if v["fixed"] < v["broken"]:
        return f"This round did not help: {went}."
    if v["fixed"] == v["broken"]:
        return f"This round made no difference: {went}."
    if not v["controls"]:
        return (f"Not shown to be better: {went}, but no random rounds were run to compare "
                "with, so it cannot be credited to the images chosen.")
    if v["better_than_before"]:
        return (f"Not shown to be better: {went}, but {randomly} did about as well "
                f"({_pct(v['control_mean'])} on average), so it cannot be credited to the "
                "images chosen.")
    if v["better_than_random"]:
        return (f"Not shown to be better: {went}, which {n:,} test images cannot tell apart "
                f"from chance, although {randomly} did worse ({_pct(v['control_mean'])} on "
                "average).")
    return (f"Not shown to be better: {went}, which {n:,} test images cannot tell apart from "
            f"chance, and {randomly} did about as well ({_pct(v['control_mean'])} on "
            "average).")


def details(v: dict) -> list[str]:
    """The tests behind the headline, one sentence each (for those who want the figures)."""
    if not v["n_test"]:
        return []
    n, rounds = v["n_test"], v["rounds"]
    corrected = f", corrected for {rounds} rounds" if rounds > 1 else ""
    lines = [f"Before and after on the same {n:,} test images: {v['fixed']} became right and "
             f"{v['broken']} became wrong (McNemar's exact test, {p_text(v['p_before'])}"
             f"{corrected})."]
    if v["test_images_needed"] and not v["better_than_before"] and v["fixed"] > v["broken"]:
        lines.append(f"A change of this size would need about {v['test_images_needed']:,} test "
                     f"images to show at {v['alpha_round']:.3g} with {POWER:.0%} power "
                     "(Connor 1987).")
    if v["controls"]:
        how = (f"the prediction-interval test (t with {v['controls'] - 1} degrees of freedom, "
               "from their mean and spread)" if v["random_test"] == INTERVAL else
               "the share of random rounds at least as good (they all gave the same error, so "
               "the prediction-interval test cannot be used)")
        short = (f"; it would need {v['controls_needed']} to go below {v['alpha_round']:.3g}"
                 if v["controls"] < v["controls_needed"] else "")
        lines.append(f"Against {v['controls']} random rounds ({random_way(v)}: "
                     f"{_pct(v['control_mean'])} on average), the round did better than "
                     f"{v['better_than_controls']} of them; {how} gives {p_text(v['p_vs_random'])}"
                     f"{corrected}. Counting alone (the share of random rounds at least as "
                     f"good, {p_text(v['p_random_empirical'])}) cannot go below 1/"
                     f"{v['controls'] + 1} = {v['smallest_empirical_p']:.3f} with "
                     f"{v['controls']} rounds{short}.")
    if v.get("fixing_beats_removing") is not None:
        instead = v["remove_instead_error"]
        lines.append(f"Removing the fixed images instead of fixing them gave {_pct(instead)}: "
                     + ("fixing them did better" if v["fixing_beats_removing"] else
                        "fixing them is not shown to do better")
                     + f" (McNemar's exact test, {p_text(v['p_fix_vs_remove'])}{corrected}).")
    lines.append(f"Both claims are tested at {v['alpha']:.2g}; \"better\" needs both, so its p is "
                 f"the larger of the two"
                 + (f" ({p_text(v['p_better'])})." if not math.isnan(v["p_better"]) else "."))
    if rounds > 1:
        lines.append(f"{rounds} cleaning rounds have been compared on these test images, so "
                     f"every p-value is multiplied by {rounds} (Bonferroni).")
    return lines
