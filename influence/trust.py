"""The trust check: a ranking's estimates against real retraining.

Estimated removal effects are compared with the real change of the query loss after retraining
without random groups of training images, a group's estimate being the sum of its members'
scores (Spearman correlation: the linear datamodeling score of TRAK, Park et al. 2023), and
without the ranking's own top sets (its most harmful images: is the estimate of removing them of
the right sign and size?). On request also without single images spread over the ranking
(Kendall τ, sign agreement): on deep models single-image effects are dominated by seed noise, so
they are off by default. Every retraining is counterfactual SGD (Definition 2) in the mode the
ranking estimates, all in one vectorised run. What the figures mean for the user:
influence.advice.trust_verdict.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import explain, methods
from .config import RunError
from .counterfactual import outcomes
from .progress import ProgressFn
from .runs import Run
from .sgd import Params

GROUPS = 10  # random groups retrained (group Spearman): a one-sided test at 0.05 over 10
# groups detects ρ = 0.74 (the MNIST CNN's, benchmarks/results/groups.md) about 4 times in 5
GROUP_SHARE = 0.05  # each group's share of the training set
TOPS = (0.01, 0.05)  # the ranking's top sets retrained, as shares of the training set
SINGLES = 0  # single images retrained (Kendall τ): 0, or 2 and more on request


def top_sizes(n_ranked: int, tops: Iterable[float] = TOPS) -> list[int]:
    """The sizes of the top sets: each share of `tops` of the ranked images (at least 1, fewer
    than all of them), without repeats, ascending."""
    return sorted({min(max(1, round(share * n_ranked)), n_ranked - 1) for share in tops
                   if n_ranked > 1})


def retraining_agreement(run: Run, ranked: pd.DataFrame, mode: str = "all", n: int = SINGLES,
                         groups: int = GROUPS, group_share: float = GROUP_SHARE,
                         exclude: Iterable[str] = (), seed: int = 0,
                         on_progress: ProgressFn | None = None,
                         query: Callable[[Params], torch.Tensor] | None = None,
                         tops: Iterable[float] = TOPS) -> dict:
    """Compare a ranking's estimated removal effects (`ranked`: sample_id, influence, most
    harmful first) with the real effect of removal on the query, retraining in `mode`:
    * groups: `groups` random groups of `group_share` of the training set; a group's
      estimate is the sum of its members' scores: Spearman correlation with the truth (the
      linear datamodeling score of TRAK, Park et al. 2023), two-sided p (group_p_value) and
      one-sided for a positive correlation (group_p_greater);
    * top sets: the ranking's first `share` of images for each share of `tops`, removed
      together: top_rows (size, estimate: the summed scores, actual);
    * singles (n = 0: none; else at least 2): n instances spread evenly over the ranking (both
      ends), each removed alone: Kendall τ and sign agreement between estimate and truth (NaN
      without singles).
    `query`: the loss whose change the scores estimate, if not the validation loss (e.g. one
    test image's, test_loss_fn); query_loss: its value without removal. All removals, plus an
    empty one as the reference, in one vectorised retraining (counterfactual.outcomes)."""
    if n < 0 or n == 1 or groups < 0 or not 0 < group_share <= 0.5 \
            or not all(0 < share <= 0.5 for share in tops):
        raise RunError("the trust check needs 0 or at least 2 single images, 0 or more groups, "
                       "and group and top-set shares above 0 and at most 0.5")
    n = min(n, len(ranked))
    picked = ranked.iloc[np.unique(np.linspace(0, len(ranked) - 1, n).round().astype(int))] \
        if n else ranked.iloc[:0]
    score = dict(zip(ranked.sample_id, ranked.influence))
    rng = np.random.default_rng(seed)
    size = max(1, round(group_share * len(ranked)))
    members = [list(rng.choice(ranked.sample_id.to_numpy(), size, replace=False))
               for _ in range(groups)] if len(ranked) > size else []
    sizes = top_sizes(len(ranked), tops)
    ids = ranked.sample_id.to_list()
    removals = [[]] + [[sid] for sid in picked.sample_id] + members + [ids[:k] for k in sizes]
    losses = outcomes(run, removals, mode, exclude, on_progress, phase="check",
                      query=query).query_loss
    actual = (losses - losses[0]).to_numpy()[1:]  # change against the empty removal
    estimate = picked.influence.to_numpy()
    single = actual[:len(picked)]
    grouped = actual[len(picked):len(picked) + len(members)]
    result = {"n": len(picked), "tau": float("nan"), "p_value": float("nan"),
              "sign_agreement": float("nan"),
              "rows": pd.DataFrame({"sample_id": picked.sample_id.to_numpy(),
                                    "estimate": estimate, "actual": single}),
              "groups": len(members), "group_size": size, "query_loss": float(losses[0]),
              "top_rows": pd.DataFrame({
                  "size": sizes, "estimate": [float(ranked.influence.iloc[:k].sum())
                                              for k in sizes],
                  "actual": actual[len(picked) + len(members):]},
                  columns=["size", "estimate", "actual"])}
    if len(picked) >= 2:
        tau = stats.kendalltau(estimate, single)
        result.update(tau=float(tau.statistic), p_value=float(tau.pvalue),
                      sign_agreement=float(np.mean(np.sign(estimate) == np.sign(single))))
    if len(members) >= 3:
        predicted = np.array([sum(score[sid] for sid in group) for group in members])
        rho = stats.spearmanr(predicted, grouped)
        greater = stats.spearmanr(predicted, grouped, alternative="greater")
        result.update(group_spearman=float(rho.statistic), group_p_value=float(rho.pvalue),
                      group_p_greater=float(greater.pvalue),
                      group_rows=pd.DataFrame({"estimate": predicted, "actual": grouped}))
    return result


FIGURES = ("method", "n", "tau", "p_value", "sign_agreement", "groups", "group_size",
           "group_spearman", "group_p_value", "group_p_greater", "query_loss", "top_rows")


def figures(result: dict) -> dict:
    """A trust check's figures to keep (JSON: NaN as None, the top sets as records), enough
    for influence.advice.trust_verdict."""
    out = {}
    for key in FIGURES:
        if key not in result:
            continue
        value = result[key]
        if isinstance(value, pd.DataFrame):
            value = value.to_dict("records")
        elif isinstance(value, float) and value != value:
            value = None
        out[key] = value
    return out


def of_ranking(run: Run, key: str, n: int = SINGLES, on_progress: ProgressFn | None = None,
               ranked: pd.DataFrame | None = None, **options) -> dict:
    """The trust check of a ranking that estimates removal (methods.estimating_removal): its
    estimates against real retraining (retraining_agreement: single images and random groups)
    in the retraining mode it estimates. `ranked`: the ranking already computed (else it is
    computed here)."""
    ranking = methods.estimating_removal(key)
    if ranked is None:
        ranked = methods.rank(run, key, on_progress)
    return {"method": key, **retraining_agreement(run, ranked, ranking.retrain_mode, n,
                                                  on_progress=on_progress, **options)}


def of_test_image(run: Run, key: str, test_id: str, n: int = SINGLES, row: np.ndarray | None = None,
                  on_progress: ProgressFn | None = None, **options) -> dict:
    """The trust check for one test image: its estimates (`row`, or computed here by
    explain.test_scores) against the real change of that image's loss after retraining
    without random groups, its top sets and, on request, n single images (of_ranking, with
    that image's loss as the query)."""
    if row is None:
        row = explain.test_scores(run, key, [test_id], on_progress)[0]
    return of_ranking(run, key, n, on_progress, ranked=run.ranking(row),
                      query=run.test_loss_fn(test_id), **options)
