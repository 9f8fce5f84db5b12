"""The memory budget changes how scoring holds its work, never its result: every θ of an epoch
kept or ⌈√T_k⌉ of them, the query gradient in one pass or in chunks."""
import pytest
import torch

from influence import memory, runs
from influence.config import RunConfig, RunError
from influence.sgd import checkpoint_every, per_sample_loss


@pytest.fixture(scope="module")
def small_batches():
    """The small CNN on the digits with batches of 16: 68 steps of 24 kB of θ, 1.6 MB an
    epoch, more than a 1 MB budget and less than 100 MB."""
    run = runs.Run(RunConfig(dataset="digits", model="cnn-small", epochs=1, batch_size=16,
                             lr=0.05, memory_mb=100))
    run.train()
    return run


def with_budget(run, mb):
    other = runs.Run(RunConfig(**{**run.config.__dict__, "memory_mb": mb}), run.data)
    other.checkpoints = run.checkpoints
    return other


def test_every_theta_kept_when_it_fits_and_the_same_bits_either_way(small_batches):
    roomy, tight = small_batches, with_budget(small_batches, 1)
    steps = roomy.schedule.steps_per_epoch
    assert roomy.replay_every() == 1
    assert tight.replay_every() == checkpoint_every(steps) > 1
    assert roomy.retrace_steps(range(1)) < tight.retrace_steps(range(1))  # fewer replayed
    u = roomy.query_loss().gradient(roomy.theta)  # one query for both (its chunks follow the
    # budget too: test_chunked_query_gradient_equals_one_pass)
    assert torch.equal(torch.as_tensor(roomy.influence(u)), torch.as_tensor(tight.influence(u)))
    a, b = roomy.relabel_influence(u), tight.relabel_influence(u)
    assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))


def test_budget_from_the_environment_and_the_config(monkeypatch):
    monkeypatch.setenv(memory.ENV, "7")
    assert memory.budget_bytes() == 7 * memory.MB
    assert memory.budget_bytes(3) == 3 * memory.MB  # the run's own setting first
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(ValueError, match="megabytes"):
        memory.budget_bytes()
    monkeypatch.delenv(memory.ENV)
    assert 0 < memory.budget_bytes() <= memory.free_bytes()
    with pytest.raises(RunError, match="memory budget"):
        RunConfig(memory_mb=0).validate()


def test_chunked_query_gradient_equals_one_pass(digits_logreg):
    run = digits_logreg  # float64
    whole = run.query_loss()
    x, y = whole.x, whole.y
    assert len(y) > 20
    one = memory.MeanLoss(whole.outputs, per_sample_loss, x, y, len(y))
    chunked = memory.MeanLoss(whole.outputs, per_sample_loss, x, y, 7)
    theta = run.theta
    assert torch.allclose(chunked(theta), one(theta), rtol=1e-12, atol=0)
    g1, g7 = one.gradient(theta), chunked.gradient(theta)
    for k in g1:
        assert torch.allclose(g7[k], g1[k], rtol=1e-10, atol=1e-14), k
    assert g1.keys() == torch.func.grad(one)(theta).keys()


def test_the_chunk_follows_the_budget_not_the_validation_set(digits_logreg):
    run = digits_logreg
    x = run.part("val").x
    per_image = memory.activation_bytes(run.model, x)
    assert per_image > x[0].numel() * x.element_size()
    small = memory.images_per_chunk(run.model, x, budget=40 * per_image)
    assert small == 10  # a quarter of the budget
    assert memory.images_per_chunk(run.model, x, budget=10 ** 12) == 1024  # at most
    assert memory.images_per_chunk(run.model, x, budget=1) == 1
