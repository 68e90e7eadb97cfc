"""The iterative L-inf core and its presets, on tiny random generators."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deepshield import attacks
from deepshield.errors import InvalidParameterError
from deepshield.models import get_architecture
from deepshield.weights import freeze
from tests.conftest import TINY_PARAMS


@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    torch.manual_seed(0)
    return freeze(get_architecture("cyclegan").build(**TINY_PARAMS["cyclegan"]))


def disruption_objective(generator: torch.nn.Module, clean: list[torch.Tensor]):
    """Per-sample MSE away from the output on the clean images, as the engine uses it."""
    references = [generator(x).detach() for x in clean]

    def objective(inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([attacks.output_distance(generator(x), ref) for x, ref in zip(inputs, references)])

    return objective


def images(*shapes: tuple[int, ...], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) * 2 - 1 for shape in shapes]


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_budget_range_and_inputs_untouched(generator, name):
    clean = images((2, 3, 32, 32), (1, 3, 24, 40))
    snapshot = [x.clone() for x in clean]
    config = attacks.preset(name, epsilon=0.03, iterations=4, step_size=0.02)
    adversarial = attacks.linf_attack(disruption_objective(generator, clean), clean, config, seed=3)
    for x, x0, adv in zip(clean, snapshot, adversarial):
        assert torch.equal(x, x0), "the caller's tensor was modified"
        assert adv.shape == x0.shape
        assert (adv - x0).abs().max() <= 0.03 + 1e-6
        assert adv.min() >= -1 and adv.max() <= 1
        assert not adv.requires_grad


@pytest.mark.parametrize("name", attacks.ATTACKS)
def test_attack_raises_the_loss(generator, name):
    clean = images((2, 3, 32, 32), seed=5)
    objective = disruption_objective(generator, clean)
    config = attacks.preset(name, epsilon=0.05, iterations=5)
    adversarial = attacks.linf_attack(objective, clean, config, seed=0)
    noise_only = [x + 1e-3 * torch.randn_like(x).sign() for x in clean]  # the seeded start's scale
    with torch.no_grad():
        assert (objective(adversarial) > 10 * objective(noise_only)).all()


def test_fgsm_is_exactly_one_signed_step_from_the_seeded_start(generator):
    clean = images((1, 3, 32, 32), seed=7)
    objective = disruption_objective(generator, clean)
    calls = []

    def counted(inputs):
        calls.append(1)
        return objective(inputs)

    adversarial = attacks.linf_attack(counted, clean, attacks.preset("fgsm", epsilon=0.04), seed=11)
    assert len(calls) == 1

    start = clean[0] + torch.empty(clean[0].shape).uniform_(-1e-3, 1e-3, generator=torch.Generator().manual_seed(11))
    start = start.clamp(-1, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective([start]).sum(), [start])
    expected = torch.clamp(clean[0] + torch.clamp(start.detach() + 0.04 * grad.sign() - clean[0], -0.04, 0.04), -1, 1)
    torch.testing.assert_close(adversarial[0], expected)


def test_fgsm_ignores_iterations_and_steps_by_epsilon():
    config = attacks.preset("fgsm", epsilon=0.03, iterations=10, step_size=0.01)
    assert (config.iterations, config.step_size, config.random_start) == (1, 0.03, False)


def test_pgd_with_a_seed_is_reproducible_and_seeds_differ(generator):
    clean = images((1, 3, 32, 32), seed=2)
    objective = disruption_objective(generator, clean)
    config = attacks.preset("pgd", iterations=3)
    first = attacks.linf_attack(objective, clean, config, seed=42)[0]
    again = attacks.linf_attack(objective, clean, config, seed=42)[0]
    other = attacks.linf_attack(objective, clean, config, seed=43)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_pgd_starts_anywhere_in_the_ball_ifgsm_near_the_input(generator):
    clean = images((1, 3, 32, 32), seed=9)
    seen = {}

    def spy(name):
        def objective(inputs):
            seen.setdefault(name, (inputs[0].detach() - clean[0]).abs().max().item())
            return inputs[0].sum(dim=(1, 2, 3))

        return objective

    attacks.linf_attack(spy("pgd"), clean, attacks.preset("pgd", iterations=1), seed=0)
    attacks.linf_attack(spy("ifgsm"), clean, attacks.preset("ifgsm", iterations=1), seed=0)
    assert seen["pgd"] > 0.04
    assert 0 < seen["ifgsm"] <= 1e-3


def test_generator_parameters_get_no_gradient(generator):
    clean = images((1, 3, 32, 32))
    attacks.linf_attack(disruption_objective(generator, clean), clean, attacks.preset("pgd", iterations=2), seed=0)
    assert all(p.grad is None and not p.requires_grad for p in generator.parameters())


def test_progress_callback_sees_every_step(generator):
    clean = images((2, 3, 32, 32))
    steps = []
    attacks.linf_attack(
        disruption_objective(generator, clean), clean, attacks.preset("ifgsm", iterations=3), seed=0,
        on_step=lambda step, total, loss: steps.append((step, total, tuple(loss.shape))),
    )
    assert steps == [(1, 3, (2,)), (2, 3, (2,)), (3, 3, (2,))]


def test_lookahead_takes_the_gradient_where_the_momentum_leads_and_steps_from_the_iterate():
    """With a linear loss (constant gradient) the look-ahead changes where the gradient is taken,
    not the steps: the iterates match the plain momentum attack's."""
    clean = images((1, 3, 8, 8), seed=4)
    weights = images((1, 3, 8, 8), seed=5)[0]
    config = replace(attacks.preset("ifgsm", iterations=3, step_size=0.01), momentum=0.9)

    def run(lookahead: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        seen = []

        def linear(inputs):
            seen.append(inputs[0].detach().clone())
            return (weights * inputs[0]).sum(dim=(1, 2, 3))

        final = attacks.linf_attack(linear, clean, replace(config, lookahead=lookahead), seed=0)[0]
        return seen, final

    ahead, final_ahead = run(True)
    plain, final_plain = run(False)
    torch.testing.assert_close(final_ahead, final_plain)
    assert torch.equal(ahead[0], plain[0])  # no momentum yet: the start itself
    velocity = weights / weights.abs().mean()
    for step in (1, 2):
        expected = attacks.project(plain[step] + 0.01 * 0.9 * velocity, clean[0], config.epsilon)
        torch.testing.assert_close(ahead[step], expected)
        assert not torch.allclose(ahead[step], plain[step])
        velocity = 0.9 * velocity + weights / weights.abs().mean()


def test_lookahead_needs_momentum():
    with pytest.raises(InvalidParameterError, match="momentum"):
        replace(attacks.preset("pgd"), lookahead=True).validate()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "pgd", "epsilon": 0.0},
        {"name": "pgd", "epsilon": 0.6},
        {"name": "pgd", "epsilon": -0.1},
        {"name": "pgd", "iterations": 0},
        {"name": "ifgsm", "step_size": 0.0},
        {"name": "cw"},
    ],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(InvalidParameterError):
        attacks.preset(**kwargs)


def test_paper_defaults():
    config = attacks.preset("pgd")
    assert (config.epsilon, config.iterations, config.step_size, config.random_start) == (0.05, 10, 0.01, True)
