"""What the pages say about time: a warning before a long job naming the faster option, and the
time left from the running phase's own pace."""
import time

import pytest

from app import words
from app.services import runner, timing
from influence.progress import Progress


def test_a_warning_before_a_job_over_five_minutes_names_the_faster_option():
    assert timing.long_warning(timing.LONG, "the fast one") is None
    said = timing.long_warning(20 * 60, "the fast one")
    assert "about 20 minutes" in said and "Faster: the fast one." in said


def test_time_left_follows_the_phase_now_running():
    job = runner.Job("s", "clean", "Retraining", started=time.time() - 100)  # a slow first phase
    job.report(Progress("retrain", 10, 10))
    job.phase_started -= 100  # the retraining took 100 s
    job.report(Progress("control", 1, 10))  # a new phase: its own clock
    assert job.phase_elapsed < 5 < job.elapsed
    job.phase_started = time.time() - 10
    job.report(Progress("control", 6, 10))  # 5 steps of the controls in 10 s
    assert "about 8 s left" in words.progress_text(job)


def test_a_phase_first_reported_part_way_paces_from_there():
    """The controls of a cleaning round run beside the cleaned run and are reported once it is
    done, by then part way: the time left counts only the steps seen since."""
    job = runner.Job("s", "clean", "Retraining")
    job.report(Progress("retrain", 10, 10))
    job.report(Progress("control", 40, 100))  # 40 steps done beside the retraining
    assert "left" not in words.progress_text(job)  # no pace yet
    job.phase_started = time.time() - 10
    job.report(Progress("control", 50, 100))  # 10 steps in 10 s: 50 left
    assert "about 50 s left" in words.progress_text(job)


def test_work_at_once_takes_the_longest_and_a_slowdown_while_two_run():
    assert timing.at_once([3.0, 3.0], 1.2) == pytest.approx(3.6)  # every core busy: 1.2× slower
    assert timing.at_once([2.0, 6.0], 1.5) == 7.0  # 2 s 1.5× slower while both run, then 3 s
    assert timing.at_once([5.0], 2.0) == 5.0 and timing.at_once([], 1.3) == 0.0


def test_a_cleaning_round_counts_its_cleaned_run_beside_the_controls():
    """Mask and training step cost 1 s a step each: 5 controls on 2 cores are shares of 3 and 2
    masks, the cleaned run (10 s) goes before the share of 2: 30 s, as one share of 3 masks."""
    guess = {"costs": {"vector": 0.0, "mask": 1.0, "parallel": 1.0, "eval": 0.0},
             "workers": 2, "vmap_chunk": 1, "steps": 10, "epochs": 2,
             "seconds_retrain": 10.0, "seconds_retrain_last": 5.0}
    assert timing.round_seconds(guess, 5, "all") == 30.0
    assert timing.round_seconds(guess, 0, "all") == 10.0
    assert timing.round_seconds({**guess, "workers": 1}, 5, "all") == 10.0 + 50.0  # in turn
    assert timing.round_seconds({**guess, "vmap_chunk": 8}, 5, "all") == 50.0  # one share:
    # the cleaned run on the other core
    assert timing.round_seconds(guess, 5, "last") == 5.0 + 10.0  # 5 steps: 15 s beside 15 s
