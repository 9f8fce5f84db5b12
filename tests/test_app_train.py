"""Page 2 with Streamlit's AppTest: whether the model learned is always said, and a validation
loss that has risen for several epochs is named with an offer to train again with fewer epochs,
as a new run (the recorded run stays the one that is scored)."""
import pytest

from app.services.store import DONE, Store
from helpers import button, new_app, ok, text, train, wait_for_job
from influence import run_folder

pytestmark = pytest.mark.usefixtures("workspace")


def test_page_two_says_whether_the_model_learned():
    at, job = train(new_app(), epochs=2)
    assert job.status == DONE, job.error
    row = Store().run(at.session_state["app"]["run"])
    right = 1 - row["metrics"]["val_error"]
    said = text(ok(at))
    assert (f"**Did it learn?** The model learned: it gets {right:.0%} of the validation images "
            "right, against 10% by guessing.") in said
    assert "Validation loss has been rising" not in said  # 2 epochs: nothing to say
    assert not [b for b in at.button if b.label.startswith("Train again with")]


def test_a_rising_validation_loss_is_named_and_fewer_epochs_are_offered_as_a_new_run():
    at, job = train(new_app(), epochs=6)
    store = Store()
    first = at.session_state["app"]["run"]
    recorded = store.run(first)
    path = store.table_file(first, "training_log")  # its validation loss: lowest after epoch 3
    log = store.training_log(first)
    ends = log.val_loss.notna()
    log.loc[ends, "val_loss"] = [0.5, 0.4, 0.3, 0.35, 0.4, 0.45]
    run_folder.write_csv(log, path)
    at.switch_page("views/train.py").run()
    said = text(ok(at))
    assert "**Validation loss has been rising for 3 epochs**" in said
    assert "Validation loss was lowest after epoch 3" in said
    assert "this run is kept as it was trained and is the one scored" in said
    assert "glossary?term=overfitting" in said
    button(at, "Train again with 3 epochs").click().run()
    assert wait_for_job(at).status == DONE
    ok(at.run())
    again = store.run(at.session_state["app"]["run"])
    assert again["id"] != first and again["kind"] == "train" and again["status"] == DONE
    assert again["config"]["epochs"] == 3
    for setting in ("lr", "batch_size", "seed", "l2", "model", "val_fraction", "dtype"):
        assert again["config"][setting] == recorded["config"][setting], setting
    assert store.run(first)["config"]["epochs"] == 6  # the recorded run is kept as it was
