"""What the pages say about time: a warning before a long job naming the faster option, and the
time left from the running phase's own pace."""
import time

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
