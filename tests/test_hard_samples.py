"""Hard-sample generation modules (augcl/functional/hard_samples.py, augcl/nn/hard_samples.py).

* shapes and ranges of G, D, the augmentation; the hinge losses against their hand formulas;
* ``diff_augment``: float64 gradcheck (fixed draws), its flip + translation against a hand loop and against the
  ``grid_sample`` variant with the same draws;
* the game: the G step's gradient reaches G through the augmentation and the encoder (the hardness term changes
  it), the encoder's parameters, gradients and BatchNorm statistics are unchanged by the game's step, D and G
  move, the optimisers' states ride in ``state_dict()``;
* the pair controller: its sign (c > s makes sigma grow), its clip, and on a toy encoder it tracks a target
  that moves from 0.9 to 0.5.
"""
import pytest
import torch
from torch import nn

from augcl.functional.hard_samples import (diff_augment, diff_augment_grid, hinge_d_loss, hinge_g_loss,
                                           pair_sigma_update, pair_target)
from augcl.nn import DiffAugment, HardSampleDiscriminator, HardSampleGame, HardSampleGenerator


def _encoder(channels=1, out=16):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, out))


@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32), (3, 8)])
def test_shapes_and_ranges(channels, size):
    g, d = HardSampleGenerator(32, channels, size), HardSampleDiscriminator(channels, size)
    x = g(torch.randn(5, 32))
    assert x.shape == (5, channels, size, size) and 0 <= x.min() and x.max() <= 1
    assert d(x).shape == (5,)
    assert DiffAugment()(x).shape == x.shape
    assert any("parametrizations" in n for n, _ in d.named_parameters())  # spectral norm on its layers


def test_bad_sizes():
    with pytest.raises(ValueError, match="image_size"):
        HardSampleGenerator(32, 1, 18)
    with pytest.raises(ValueError, match="x must be"):
        diff_augment(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="translate"):
        diff_augment(torch.rand(2, 1, 4, 4), translate=1.0)
    with pytest.raises(ValueError, match="even"):
        HardSampleGame(1, 16, (0.5,), (0.2,), hard_pairs=True, per_step=5)


def test_hinge_losses_hand_formulas():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 0.7, 3.0])
    want_d = (0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 1.7 + 4.0) / 4
    assert hinge_d_loss(real, fake).item() == pytest.approx(want_d)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 0.7 + 3.0) / 4)


def _fixed(fn, seed=3, **kw):
    """``fn`` with the same random draws at every call (gradcheck evaluates it many times)."""
    return lambda x: fn(x, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_diff_augment_gradcheck_float64(channels):
    x = torch.rand(3, channels, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_fixed(diff_augment, translate=0.34), (x,))


def test_diff_augment_flip_translate_matches_a_hand_loop():
    x = torch.rand(6, 2, 8, 8, dtype=torch.float64)
    y = diff_augment(x, brightness=0, saturation=0, contrast=0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the function's order
    dy = torch.randint(-1, 2, (6, 1, 1), generator=g).flatten()
    dx = torch.randint(-1, 2, (6, 1, 1), generator=g).flatten()
    flip = (torch.rand(6, 1, 1, generator=g) < 0.5).flatten()
    for b in range(6):
        src = x[b].flip(-1) if flip[b] else x[b]
        want = torch.zeros_like(src)
        for i in range(8):
            for j in range(8):
                si, sj = i - int(dy[b]), j - int(dx[b])
                if 0 <= si < 8 and 0 <= sj < 8:
                    want[:, i, j] = src[:, si, sj]
        assert torch.equal(y[b], want), b
    assert flip.any() and (~flip).any() and (dx != 0).any()  # the draws exercise every branch


def test_gather_equals_grid_sample_variant():
    x = torch.rand(10, 3, 16, 16, dtype=torch.float64)
    a = diff_augment(x, brightness=0, saturation=0, contrast=0, generator=torch.Generator().manual_seed(2))
    b = diff_augment_grid(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_pair_controller_sign_and_clip():
    assert pair_sigma_update(0.5, 0.95, 0.8) > 0.5  # too similar (easy): sigma grows
    assert pair_sigma_update(0.5, 0.6, 0.8) < 0.5  # too different (hard): sigma shrinks
    assert pair_sigma_update(1.5, 1.0, 0.0, gain=10) == 1.5 and pair_sigma_update(0.01, -1.0, 1.0, gain=10) == 0.01
    t = pair_sigma_update(torch.tensor(0.5), torch.tensor(0.95), 0.8)
    assert abs(float(t) - pair_sigma_update(0.5, 0.95, 0.8)) < 1e-6
    assert pair_target(0.0) == 0.9 and pair_target(1.0) == 0.5 and pair_target(0.5) == pytest.approx(0.7)


def test_controller_tracks_a_moving_target_on_a_toy_encoder():
    """G fixed, the encoder a fixed random linear map: the measured similarity falls with sigma, so the
    feedback brings it onto the target falling 0.9 -> 0.5 and keeps it there."""
    torch.manual_seed(0)
    game = HardSampleGame(1, 16, (0.5,), (0.25,), hard_samples=False, hard_pairs=True, per_step=64,
                          pair_gain=0.5, sigma=0.1)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(256, 32))
    gen, steps, errors = torch.Generator().manual_seed(0), 200, []
    for step in range(steps):
        u, _ = game._latents(gen)
        with torch.no_grad():
            images = game.generator(u)
        s = game._control(images, enc, step, steps)
        errors.append(float(s["pair_cos"] - s["pair_target"]))
    assert errors[0] > 0.05  # starts too similar
    late = torch.tensor(errors[100:])
    assert late.abs().mean() < 0.04, late
    assert float(game.sigma) > 0.6  # it had to open the pairs up to follow the target down


def _game(**kw):
    torch.manual_seed(0)
    return HardSampleGame(1, 16, (0.4,), (0.3,), per_step=8, **kw)


def test_hardness_term_reaches_g_through_augmentation_and_encoder():
    enc, real = _encoder(), torch.rand(16, 1, 16, 16)
    grads = []
    for beta in (0.0, 5.0):
        game = _game(hard_samples=True, beta=beta)
        seen = {}
        step = game.opt_g.step

        def spy():
            seen.update({n: p.grad.clone() for n, p in game.generator.named_parameters()})
            step()

        game.opt_g.step = spy
        game.step(real, enc, 0, 10, torch.Generator().manual_seed(0))
        grads.append(seen)
    diff = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    assert diff > 1e-6  # the contrastive term adds to G's gradient (through DiffAugment and the encoder)


@pytest.mark.parametrize("pairs", [False, True])
def test_game_step_leaves_the_encoder_alone(pairs):
    enc, real = _encoder(), torch.rand(16, 1, 16, 16)
    enc.train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    game = _game(hard_samples=True, hard_pairs=pairs, beta=1.0)
    g0 = [p.detach().clone() for p in game.generator.parameters()]
    d0 = [p.detach().clone() for p in game.discriminator.parameters()]
    syn = game.step(real, enc, 0, 10, torch.Generator().manual_seed(0))
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert all(p.grad is None for p in enc.parameters()) and enc.training
    assert any(not torch.equal(a, p) for a, p in zip(g0, game.generator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(d0, game.discriminator.parameters()))
    per_id = 4 if pairs else 2
    assert syn.views.shape == (8 * 2, 1, 16, 16) and not syn.views.requires_grad
    assert torch.equal(torch.bincount(syn.ids), torch.full((8 * 2 // per_id,), per_id))


def test_warmup_and_frozen():
    enc, real = _encoder(), torch.rand(16, 1, 16, 16)
    game = _game(hard_samples=True, warmup_steps=1, frozen=True)
    assert game.step(real, enc, 0, 10) is None  # warm-up: plain GAN, no synthetic views yet
    g0 = [p.detach().clone() for p in game.generator.parameters()]
    assert game.step(real, enc, 1, 10) is not None
    assert all(torch.equal(a, p) for a, p in zip(g0, game.generator.parameters()))  # frozen after the warm-up
    stats = game.epoch_stats()
    assert stats["gen_loss"] is not None and stats["pair_cos"] is None  # means over the steps that had them
    assert game.epoch_stats()["gen_loss"] is None  # reset by the call


def test_state_dict_holds_optimisers_and_sigma():
    enc, real = _encoder(), torch.rand(16, 1, 16, 16)
    game = _game(hard_pairs=True)
    game.step(real, enc, 0, 10)
    game.snapshot(1)
    other = _game(hard_pairs=True)
    other.load_state_dict(game.state_dict())
    assert float(other.sigma) == float(game.sigma) != 0.5
    assert len(other.opt_g.state) == len(list(game.generator.parameters()))
    for a, b in zip(other.opt_d.state.values(), game.opt_d.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert len(other.previews) == 1 and other.previews[0][2].dtype == torch.uint8
