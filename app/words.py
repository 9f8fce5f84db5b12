"""Everything the app says in words: names of phases and runs, times, sizes, counts, what a
cleaning round does, and errors turned into plain sentences."""
from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from datasets import DataError
from influence import compare
from influence.advice import demo_counts, possible_estimate
from influence.config import RunConfig, RunError, selection_size
from influence.sgd import Diverged

GLOSSARY = Path(__file__).resolve().parents[1] / "docs" / "glossary.md"
ENTRY = re.compile(r'^### <a id="(?P<anchor>[^"]+)"></a>(?P<title>.+)$', re.M)

PHASES = {"probe": "Choosing the learning rate", "train": "Training",
          "score": "Computing influence", "rank": "Ranking",
          "check": "Checking against real retraining",
          "retrain": "Retraining without the ticked images",
          "control": "Control: retraining without as many random images",
          "curve": "Retraining without the top k and random sets of k"}


def progress_text(job) -> str:
    """A running job's progress in words: what it does, how far, how long so far and left."""
    what = PHASES.get(job.phase, job.phase.capitalize())
    unit = "images checked" if job.phase == "check" else "steps"
    if job.total <= 1:  # one piece of work that reports no steps
        text = f"{what}, {job.elapsed:.0f} s so far"
    elif job.phase == "rank":  # a baseline's own units (iterations, epochs, checkpoints)
        text = f"{what}: {job.fraction:.0%} done, {job.elapsed:.0f} s so far"
    else:
        text = f"{what}: {job.done:,} of {job.total:,} {unit}, {job.elapsed:.0f} s so far"
    paced = job.done - getattr(job, "phase_done", 0)  # units since this phase was first seen
    if job.running and paced > 0 and job.done < job.total:
        spent = getattr(job, "phase_elapsed", job.elapsed)  # this phase's own pace
        left = spent * (job.total - job.done) / paced
        text += f", about {left:.0f} s left" if left < 90 else \
            f", about {left / 60:.0f} min left"
    return text


def plain_message(e: BaseException) -> str:
    """An exception as one sentence for a non-expert."""
    if isinstance(e, Diverged):
        what = "not a number" if not math.isfinite(e.loss) else f"{e.loss:.3g}, far too large"
        return (f"training stopped at step {e.step + 1} because the loss became {what}. "
                f"The learning rate {e.suggested_lr * 10:g} is too high for this data: "
                f"try {e.suggested_lr:g}.")
    if isinstance(e, (DataError, RunError)):
        return str(e)
    if isinstance(e, OSError):
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return (f"a workspace file could not be read or written ({e.strerror or e}{where}); "
                "check that the disk is not full and the folder is writable")
    return f"unexpected {type(e).__name__}: {e}"


def dataset_label(row: dict) -> str:
    h, w, c = row["shape"]
    flipped = f" · demo: {len(row['flipped'])} training labels flipped" \
        if row.get("flipped") else ""
    return f"{row['name']} ({row['n']:,} images, {h}×{w}{' colour' if c == 3 else ''}){flipped}"


def run_label(row: dict) -> str:
    kind = {"train": "Trained model", "cleaned": "Cleaned model",
            "control": "Random-removal control"}.get(row["kind"], row["kind"])
    when = time.strftime("%d %b %H:%M", time.localtime(row["created"]))
    metrics = row.get("metrics") or {}
    removed = len((row.get("config") or {}).get("removed") or {})
    detail = f"test error {metrics['test_error']:.1%}" if "test_error" in metrics \
        else row["status"]
    gone = f", {removed} removed" if removed else ""
    return f"{kind} of {when}{gone} · {detail}"


def seconds(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 90:
        return f"about {s:.0f} s"
    return f"about {s / 60:.0f} min"


def on_cores(workers: int) -> str:
    """" on this computer's N CPU cores" where the work is shared among several, else ""."""
    return f" on this computer's {workers} CPU cores" if workers > 1 else ""


def size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def percent(x: float) -> str:
    return f"{x:.2%}"


def p_value(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


LINKED = (("McNemar's exact test", "mcnemar"), ("prediction-interval test", "prediction-interval"),
          ("random rounds", "random-controls"), ("Bonferroni", "rounds"),
          ('"better"', "better"))


def linked(sentence: str) -> str:
    """The engine's sentence with the first mention of each glossary term as its link."""
    for phrase, anchor in LINKED:
        sentence = sentence.replace(phrase, term(anchor, phrase), 1)
    return sentence


def verdict(v: dict) -> list[str]:
    """A cleaning round's verdict (influence.compare.verdict_for_rounds, restated for the rounds
    compared on the data set's test images) as page 4 says it: the headline in bold, then the
    tests behind it (McNemar for "better than before", the prediction-interval or the empirical
    test for "better than random", the correction for rounds), with glossary links."""
    if not v["n_test"]:
        return [v["sentence"]]
    lines = [f"**{v['sentence']}**", *map(linked, v["details"])]
    if v["rounds"] == 1:
        lines.append(f"This is the only round compared on these test images so far, so no "
                     f"p-value is corrected for {term('rounds', 'rounds')}; each later round "
                     "multiplies every p-value by the number of rounds (Bonferroni).")
    lines.append(f"The two claims need no {term('holm', 'Holm correction')} between them: "
                 "\"better\" is only said when each passes on its own.")
    if not v["controls"]:
        lines.append("With at least 2 random rounds the prediction-interval test can tell "
                     "whether the chosen images beat chance.")
    return lines


def before_running(controls: int, rounds: int) -> str:
    """Page 4's caption under the number of random controls: the test that will be used and
    whether p < 0.05 can be reached with this many (`rounds`: this round's count of rounds
    compared on the data set's test images, itself included)."""
    alpha = compare.ALPHA / rounds
    needed = compare.controls_needed(alpha)
    corrected = (f"This will be round {rounds} on these test images, so every p-value is "
                 f"multiplied by {rounds} ({term('rounds', 'Bonferroni')}). ") if rounds > 1 \
        else ""
    if controls < 2:
        return (corrected + f"With {controls} random control{'s' * (controls != 1)} "
                "\"better than random\" cannot be shown: the "
                f"{term('prediction-interval', 'prediction-interval test')} needs at least 2, "
                f"counting alone at least {needed}.")
    counting = (f" Counting alone (the share of controls at least as good) cannot go below "
                f"1/{controls + 1} = {compare.smallest_empirical_p(controls):.3f}: it would need "
                f"{needed} controls to go below {alpha:.3g}; it is shown beside it."
                if controls < needed else " The share of controls at least as good is shown "
                "beside it.")
    return (corrected + f"\"Better than random\" uses the "
            f"{term('prediction-interval', 'prediction-interval test')}: from the controls' "
            f"mean and spread, t with {controls - 1} degrees of freedom, at {alpha:.3g}."
            + counting)


def trust(t: dict, of: str = "validation loss") -> str:
    """The trust check's figures in words: groups first (what a user removes), the ranking's top
    sets, then single images where they were retrained. `of`: the loss whose change was
    estimated (e.g. "this test image's loss"). An estimate outside what is possible (a drop
    larger than the loss itself) is never shown as a number."""
    text = "Checked against real retraining. "
    if t.get("group_spearman") is not None:
        rho = t["group_spearman"]
        how = "closely" if rho >= 0.7 else "roughly" if rho >= 0.4 else "hardly"
        text += (f"**Groups:** for {t['groups']} random groups of {t['group_size']:,} images, "
                 f"the summed estimates follow the real change of {of} {how} "
                 f"(Spearman {rho:.2f}; 1 = same order, 0 = no relation). ")
    for row in t.get("top_rows") or []:
        shown = possible_estimate(row["estimate"], t.get("query_loss"))
        text += (f"**Top {row['size']:,}:** removing them was estimated to change the {of} "
                 + (f"by {shown:+.4f}" if shown is not None else
                    "by more than the loss itself (impossible)")
                 + f"; retraining changed it by {row['actual']:+.4f}. ")
    if t.get("n") and t.get("tau") is not None and math.isfinite(t["tau"]):
        text += (f"**Single images:** Kendall τ = {t['tau']:.2f} over {t['n']} images, and the "
                 f"estimate had the right sign for {t['sign_agreement']:.0%} of them. On a deep "
                 "network the effect of one image is mostly noise of training itself; the "
                 "group figure is the one to go by when removing many.")
    return text.strip()


def selection_part(n_val: int, fraction: float = RunConfig.selection_fraction) -> str:
    """Page 1's sentence on the selection part of the validation images."""
    n = selection_size(n_val, fraction)
    query = term("query", "query")
    if n == 0:
        return (f"All validation images define the {query} of influence; none is held out to "
                "judge how many images to remove.")
    return (f"Of the validation images, **{n:,}** (about {fraction:.0%}, chosen by the seed) "
            "are held out as the *selection* part: they never define what 'harmful' means, "
            "and on page 3 they judge how many harmful images to remove "
            f"({term('selection-part', 'what this is')}). The other **{n_val - n:,}** define "
            f"the {query} of influence.")


def count(n: int, thing: str) -> str:
    """E.g. "1 CPU", "2 GPUs"."""
    return f"{n} {thing}{'s' * (n != 1)}"


# --- fixing labels and cleaning rounds ----------------------------------------------------------
def demo_fixes(flipped: dict[str, str], removed, fixes: dict[str, str]) -> str:
    """E.g. "3 of your 5 fixed images are flipped ones, 2 of them fixed to their true label"."""
    n = demo_counts(flipped, removed, fixes)
    return (f"**{n['fixed']}** of your {len(fixes)} fixed images are flipped ones, "
            f"**{n['fixed_true']}** of them fixed to their true label")


def round_action(k: int, f: int) -> str:
    """What a round does, e.g. "Removing the 3 ticked images and fixing 2 labels"."""
    parts = ([f"removing the {k} ticked image{'s' * (k != 1)}"] if k else []) + \
        ([f"fixing {f} label{'s' * (f != 1)}"] if f else [])
    return " and ".join(parts).capitalize()


def retrain_button(k: int, f: int) -> str:
    """Page 4's button, e.g. "Retrain with the 2 fixed labels and without the 3 ticked images"."""
    if not f:
        return f"Retrain without the {k} ticked image{'s' * (k != 1)}"
    return (f"Retrain with the {f} fixed label{'s' * (f != 1)}"
            + (f" and without the {k} ticked image{'s' * (k != 1)}" if k else ""))


def controls_label(k: int, f: int) -> str:
    """The label of page 4's number of random controls: what each control does instead (the
    fair alternatives of influence.cleaning)."""
    if not f:
        return f"Random controls: retrain without {k} random images, this many times"
    return (f"Random controls: retrain with {f} random images the label check flags fixed to "
            "its label" + (f" and without {k} random images" if k else "") + ", this many times")


def controls_help(k: int, f: int) -> str:
    """The help of page 4's number of random controls."""
    fair = ("removing as many random images" if not f else
            f"fixing {f} random images the label check flags, to the label it suggests"
            + (f", and removing {k} random images" if k else "")
            + " (never random wrong labels, which would only add noise); and one more model "
            "with the same images removed instead of fixed")
    return (f"The fair alternatives to compare with ({term('random-controls', 'random controls')}"
            f"): {fair}. All controls run together in one vectorised retraining. 0: none (then "
            "nothing can be said about chance).")


# --- the glossary: docs/glossary.md, shown by the Glossary page, linked from the others --------
@dataclass(frozen=True)
class Entry:
    anchor: str  # e.g. "holm": the link target, glossary#holm
    title: str  # e.g. "Holm's correction"
    text: str  # the explanation, Markdown


@functools.cache
def glossary() -> dict[str, Entry]:
    """The entries of docs/glossary.md by anchor, in its order. Each entry is a heading
    `### <a id="anchor"></a>Title` and the text below it, up to the next heading."""
    text = GLOSSARY.read_text(encoding="utf-8")
    entries = {}
    for m in ENTRY.finditer(text):
        end = re.search(r"^#", text[m.end():], re.M)
        body = text[m.end():m.end() + end.start()] if end else text[m.end():]
        entries[m["anchor"]] = Entry(m["anchor"], m["title"].strip(), body.strip())
    return entries


def term(anchor: str, text: str | None = None) -> str:
    """A Markdown link to the glossary's entry, for a help text or caption that uses the term:
    term("holm") gives "[Holm's correction](glossary?term=holm)"; `text` replaces the title.
    The link opens the app's Glossary page (in a new tab) with that entry on top: a query
    parameter, since the app rewrites its URL and a #fragment would not survive. An unknown
    anchor is a KeyError (the docs test checks every term the pages link)."""
    return f"[{text or glossary()[anchor].title}](glossary?term={anchor})"


def glossary_for_app(markdown: str) -> str:
    """An entry's Markdown as the Glossary page shows it: links to other entries (#anchor) stay,
    links to files of the repository (docs, results) keep only their text."""
    return re.sub(r"\[([^\]]*)\]\((?!#|https?:)[^)]*\)", r"\1", markdown)


# --- page 3: what it recommends ----------------------------------------------------------------
def left_out(n_out: int, n_val: int, n_flagged: int) -> str:
    """How many validation images are left out of the query: never dropped silently."""
    query = term("query", "query")
    if not n_out:
        return (f"All **{n_val:,}** validation images are in the {query}; none is left out"
                + (f", though the label check flags {n_flagged}." if n_flagged else "."))
    return (f"**{n_out:,}** of the {n_val:,} validation images are left out of the {query} "
            f"({n_flagged:,} flagged by the label check); the other {n_val - n_out:,} measure "
            "harm. Every one is listed below with its id.")


def curve_not_followed() -> str:
    return ("Shown for information only: removing by this ranking is not recommended on this "
            f"data, because its {term('trust-check', 'trust check')} has not passed (see "
            "above), so K is not filled in from it.")


def not_predictive(title: str) -> str:
    """The sentence when a ranking's trust check fails."""
    return (f"{title} does not predict what retraining does on this data: removing images by "
            "it is not recommended. Only the label check's fixes are.")
