"""Page 3's pieces that need no running app: the k-curve chart's axis, and the review grid's
rows, filters and decisions (app.sections.review)."""
import numpy as np
import pandas as pd

from app import charts

KS = [0, 5, 10, 20, 50, 100, 200, 500]


def band(ks=KS) -> pd.DataFrame:
    rows = []
    for k in ks:
        row = {"k": k, "selection_loss": 0.5 - k / 5000, "selection_error": 0.1 + k / 1e4}
        for what in ("selection_loss", "selection_error"):
            for part, shift in (("mean", 0.0), ("low", -0.02), ("high", 0.02)):
                row[f"random_{part}_{what}"] = np.nan if k == 0 else 0.5 + shift
        rows.append(row)
    return pd.DataFrame(rows)


def test_the_k_curve_spreads_its_points_and_marks_the_suggestion_among_them():
    for k in (200, 500, 5):
        fig = charts.k_curve_chart(band(), k)
        xs = {tuple(np.asarray(t.x).tolist()) for t in fig.data}
        assert xs == {tuple(range(len(KS)))}  # evenly spaced positions, one per size
        assert list(fig.layout.xaxis.ticktext) == [str(k) for k in KS]
        marks = [s.x0 for s in fig.layout.shapes]
        assert marks == [KS.index(k)] * 2  # on the point of that size, not at x = k
        assert fig.layout.xaxis.range[1] < len(KS)
    assert not charts.k_curve_chart(band(), 7).layout.shapes  # not a size tried: no mark
