"""The app's plotly charts: learning curves, class counts, score histograms, random controls,
the k-curve, and the comparison of models (test error, error per class, confusion matrices)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import confusion_matrix

from datasets import ImageSet
from influence import methods

BLUE, ORANGE, GREY, GREEN, RED = "#1f77b4", "#ff7f0e", "#9e9e9e", "#2ca02c", "#d62728"


def curves_chart(log: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per training step (thin) and on the validation images at each epoch's
    end (dots), against epochs."""
    fig = make_subplots(1, 2, subplot_titles=("Loss (lower is better)",
                                              "Accuracy (higher is better)"))
    if len(log):
        position = log.groupby("epoch").cumcount() + 1
        per_epoch = log.groupby("epoch")["step"].transform("count")
        x = log["epoch"] - 1 + position / per_epoch
        val = log["val_loss"].notna()
        for col, (train_key, val_key) in enumerate((("loss", "val_loss"),
                                                    ("accuracy", "val_accuracy")), 1):
            fig.add_trace(go.Scatter(x=x, y=log[train_key], name="training (per step)",
                                     line=dict(color=BLUE, width=1), opacity=0.6,
                                     showlegend=col == 1, legendgroup="t"), 1, col)
            fig.add_trace(go.Scatter(x=x[val], y=log.loc[val, val_key],
                                     name="validation (per epoch)", mode="lines+markers",
                                     line=dict(color=ORANGE, width=2), showlegend=col == 1,
                                     legendgroup="v"), 1, col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def class_counts_chart(data: ImageSet) -> go.Figure:
    counts = np.bincount(data.labels, minlength=len(data.classes))
    fig = go.Figure(go.Bar(x=[str(c) for c in data.classes], y=counts, marker_color=BLUE,
                           text=counts, textposition="outside"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), title="Images per class",
                      xaxis_title="class", yaxis_title="images", xaxis_type="category",
                      yaxis_range=[0, counts.max() * 1.18])
    return fig


def scores_histogram(frame: pd.DataFrame, method: str = "sgd") -> go.Figure:
    fig = go.Figure()
    if methods.get(method).estimates_removal:
        harmful = frame.influence < 0
        fig.add_trace(go.Histogram(x=frame.influence[harmful], name="harmful (removing helps)",
                                   marker_color=RED, nbinsx=60))
        fig.add_trace(go.Histogram(x=frame.influence[~harmful], name="helpful (removing hurts)",
                                   marker_color=GREEN, nbinsx=60))
        fig.add_vline(x=0, line_color=GREY, line_dash="dot")
        title = "All scores: estimated change of validation loss if removed"
        axis = "change of validation loss"
    else:
        fig.add_trace(go.Histogram(x=frame.influence, name="training images",
                                   marker_color=BLUE, nbinsx=60))
        title = f"All scores: {methods.get(method).title}"
        axis = "score (lower = more suspicious)"
    fig.update_layout(height=260, barmode="overlay", margin=dict(l=10, r=10, t=30, b=10),
                      title=title, xaxis_title=axis, yaxis_title="images",
                      yaxis=dict(type="log", dtick=1), legend=dict(orientation="h", y=-0.35))
    return fig


def controls_chart(v: dict) -> go.Figure:
    """Test error of each random removal of the same size (dots), with the model before (grey)
    and after cleaning (green) marked: where the cleaned model falls among them."""
    controls = np.asarray(v["control_errors"], dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(controls))
    what = "random round" if v.get("relabelled") else "random removal"
    fig = go.Figure(go.Scatter(x=controls, y=jitter, mode="markers", name=what,
                               marker=dict(color=ORANGE, size=9, opacity=0.7),
                               hovertemplate=f"%{{x:.2%}}<extra>{what}</extra>"))
    for x, name, colour, side in ((v["test_error_before"], "before", GREY, "top left"),
                                  (v["test_error_after"], "after cleaning", GREEN, "top right")):
        fig.add_vline(x=x, line_color=colour, line_width=3, annotation_text=name,
                      annotation_position=side)  # apart, also when the two errors are equal
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=50, b=10), showlegend=False,
                      title=f"Test error: the cleaned model among {what}s of the same size",
                      xaxis_tickformat=".1%", xaxis_title="test error (lower is better)",
                      yaxis=dict(visible=False, range=[-1, 1]))
    return fig


def k_curve_chart(band: pd.DataFrame, suggested: int) -> go.Figure:
    """Selection loss and error after removing the ranking's top k (line), and the range of as
    many random removals (shaded, with their mean dashed), against k; the suggested k marked.
    The sizes tried (0, 5, 10, … 500) sit evenly spaced at positions 0, 1, 2, … labelled with
    their k: on a category axis a marker line at x = "200" is placed at position 200, which
    squeezed every point against the left edge."""
    fig = make_subplots(1, 2, subplot_titles=("Selection loss (lower is better)",
                                              "Selection error (lower is better)"))
    ks = pd.to_numeric(band.k).astype(int).to_numpy()
    x = np.arange(len(ks))
    for col, what in enumerate(("selection_loss", "selection_error"), 1):
        low, high = band[f"random_low_{what}"], band[f"random_high_{what}"]
        shown = ".1%" if what == "selection_error" else ".4f"
        hover = f"k = %{{customdata}}: %{{y:{shown}}}<extra>%{{fullData.name}}</extra>"
        if low.notna().any():
            fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line=dict(width=0),
                                     showlegend=False, hoverinfo="skip"), 1, col)
            fig.add_trace(go.Scatter(x=x, y=low, mode="lines", line=dict(width=0),
                                     fill="tonexty", fillcolor="rgba(255,127,14,0.2)",
                                     name="random removals (range)", showlegend=col == 1,
                                     legendgroup="r", hoverinfo="skip"), 1, col)
            fig.add_trace(go.Scatter(x=x, y=band[f"random_mean_{what}"], mode="lines",
                                     line=dict(color=ORANGE, dash="dash"), customdata=ks,
                                     hovertemplate=hover, name="random removals (mean)",
                                     showlegend=col == 1, legendgroup="m"), 1, col)
        fig.add_trace(go.Scatter(x=x, y=band[what], mode="lines+markers", customdata=ks,
                                 hovertemplate=hover, line=dict(color=BLUE, width=2),
                                 name="top k of the ranking", showlegend=col == 1,
                                 legendgroup="t"), 1, col)
        if suggested in ks:
            fig.add_vline(x=int(np.flatnonzero(ks == suggested)[0]), line_color=GREEN,
                          line_dash="dot", row=1, col=col)
    fig.update_xaxes(title_text="k (images removed)", tickmode="array", tickvals=x,
                     ticktext=[str(k) for k in ks], range=[-0.3, len(ks) - 0.7])
    fig.update_yaxes(tickformat=".1%", row=1, col=2)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.3))
    return fig


# --- comparing models on their test images (each a table of label and predicted per image) ----
def test_error_chart(names: list[str], errors: list[float], colours: list[str]) -> go.Figure:
    fig = go.Figure(go.Bar(x=names, y=errors, marker_color=colours,
                           text=[f"{e:.2%}" for e in errors], textposition="outside"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), yaxis_tickformat=".1%",
                      title="Misclassified test images (lower is better)",
                      yaxis_range=[0, max(errors) * 1.25 if max(errors) > 0 else 1])
    return fig


def class_error_chart(parts: dict[str, pd.DataFrame], classes, colours: list[str]
                      ) -> go.Figure:
    """The error per class of each model (named by the keys of `parts`)."""
    per_class = pd.DataFrame({
        name: (p.predicted != p.label).groupby(p.label).mean() for name, p in parts.items()})
    per_class.index = [classes[int(i)] for i in per_class.index]
    fig = go.Figure([go.Bar(x=per_class.index.astype(str), y=per_class[name], name=name,
                            marker_color=c) for name, c in zip(parts, colours)])
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), barmode="group",
                      title="Error per class", yaxis_tickformat=".0%", xaxis_type="category",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def confusion_chart(parts: dict[str, pd.DataFrame], classes) -> go.Figure:
    """The confusion matrix of each model, side by side."""
    k = len(classes)
    fig = make_subplots(1, len(parts), subplot_titles=list(parts), horizontal_spacing=0.08)
    for i, p in enumerate(parts.values(), 1):
        matrix = confusion_matrix(p.label, p.predicted, labels=range(k))
        fig.add_trace(go.Heatmap(z=matrix, x=classes, y=classes, text=matrix,
                                 texttemplate="%{text}", coloraxis="coloraxis"), 1, i)
    fig.update_xaxes(title_text="predicted", type="category")
    fig.update_yaxes(title_text="given label", type="category", autorange="reversed")
    fig.update_layout(height=360 if k <= 10 else 600, coloraxis=dict(colorscale="Blues"),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
