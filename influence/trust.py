"""The trust check: a ranking's estimates against real retraining.

Estimated removal effects are compared with the real change of the query loss after retraining
without n single training images spread over the ranking (Kendall τ, sign agreement) and without
random groups of them, a group's estimate being the sum of its members' scores (Spearman
correlation: the linear datamodeling score of TRAK, Park et al. 2023). Every retraining is
counterfactual SGD (Definition 2) in the mode the ranking estimates, all in one vectorised run.
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


def retraining_agreement(run: Run, ranked: pd.DataFrame, mode: str = "all", n: int = 10,
                         groups: int = 20, group_share: float = 0.05, exclude: Iterable[str] = (),
                         seed: int = 0, on_progress: ProgressFn | None = None,
                         query: Callable[[Params], torch.Tensor] | None = None) -> dict:
    """Compare a ranking's estimated removal effects (`ranked`: sample_id, influence) with
    the real effect of removal on the query, retraining in `mode`:
    * singles: n instances spread evenly over the ranking (both ends), each removed alone:
      Kendall τ and sign agreement between estimate and truth;
    * groups: `groups` random groups of `group_share` of the training set; a group's
      estimate is the sum of its members' scores: Spearman correlation with the truth (the
      linear datamodeling score of TRAK, Park et al. 2023).
    `query`: the loss whose change the scores estimate, if not the validation loss (e.g. one
    test image's, test_loss_fn). All removals, plus an empty one as the reference, in one
    vectorised retraining (counterfactual.outcomes)."""
    if n < 2 or groups < 0 or not 0 < group_share <= 0.5:
        raise RunError("the trust check needs at least 2 single images, 0 or more groups "
                       "and a group share above 0 and at most 0.5")
    n = min(n, len(ranked))
    picked = ranked.iloc[np.unique(np.linspace(0, len(ranked) - 1, n).round().astype(int))]
    score = dict(zip(ranked.sample_id, ranked.influence))
    rng = np.random.default_rng(seed)
    size = max(1, round(group_share * len(ranked)))
    members = [list(rng.choice(ranked.sample_id.to_numpy(), size, replace=False))
               for _ in range(groups)] if len(ranked) > size else []
    removals = [[]] + [[sid] for sid in picked.sample_id] + members
    losses = outcomes(run, removals, mode, exclude, on_progress, phase="check",
                      query=query).query_loss
    actual = (losses - losses[0]).to_numpy()[1:]  # change against the empty removal
    estimate = picked.influence.to_numpy()
    single, grouped = actual[:len(picked)], actual[len(picked):]
    tau = stats.kendalltau(estimate, single)
    result = {"n": len(picked), "tau": float(tau.statistic), "p_value": float(tau.pvalue),
              "sign_agreement": float(np.mean(np.sign(estimate) == np.sign(single))),
              "rows": pd.DataFrame({"sample_id": picked.sample_id.to_numpy(),
                                    "estimate": estimate, "actual": single}),
              "groups": len(members), "group_size": size}
    if len(members) >= 3:
        predicted = np.array([sum(score[sid] for sid in group) for group in members])
        rho = stats.spearmanr(predicted, grouped)
        result.update(group_spearman=float(rho.statistic), group_p_value=float(rho.pvalue),
                      group_rows=pd.DataFrame({"estimate": predicted, "actual": grouped}))
    return result


def of_ranking(run: Run, key: str, n: int = 10, on_progress: ProgressFn | None = None,
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


def of_test_image(run: Run, key: str, test_id: str, n: int = 10, row: np.ndarray | None = None,
                  on_progress: ProgressFn | None = None, **options) -> dict:
    """The trust check for one test image: its estimates (`row`, or computed here by
    explain.test_scores) against the real change of that image's loss after retraining
    without n single training images and random groups (of_ranking, with that image's loss
    as the query)."""
    if row is None:
        row = explain.test_scores(run, key, [test_id], on_progress)[0]
    return of_ranking(run, key, n, on_progress, ranked=run.ranking(row),
                      query=run.test_loss_fn(test_id), **options)
