"""The training driver's SwAV recipe (augcl/train/methods/swav.py) on digits must not collapse.

With the paper's Sinkhorn epsilon 0.05, SwAV on digits (small CNN, batch 128, 134 prototypes) fell within two
epochs into its trivial solution: Sinkhorn codes uniform over the prototypes (entropy 0.99 ln K), the loss
stuck at ln K, and the encoder's kNN accuracy below the random-init encoder's. These tests rebuild the recipe
from the driver's own parts (digits, the small CNN, the view plan with 4 small crops, ``build_method``'s
defaults, AdamW at the driver's lr 1e-3 / weight decay 1e-4 for batch 128, prototypes frozen for the first
epoch of 10 steps) and measure the entropy of the codes it trains on. The control runs the same recipe with
epsilon 0.05 and must see the collapse, so the measurement can tell the two apart. The last test checks the
table benchmarks/seed_table.py writes for the SwAV rows (the random-init row beside the methods).
"""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import augcl.functional as AF
from augcl.train.augment import augment, view_plan
from augcl.train.data import digits
from augcl.train.methods import build_method
from augcl.train.models import build_backbone

# The driver on digits: 1347 training images, 1347 // 128 steps per epoch, 1347 // 10 prototypes.
BATCH, PROTOTYPES, STEPS_PER_EPOCH = 128, 134, 10
PAPER_EPSILON = 0.05


def _recipe(seed: int, epsilon=None):
    """(method, views, images [1347, 1, 8, 8] uint8, mean [1], std [1]) as the driver builds them for
    ``--method swav`` on digits; ``epsilon`` overrides the recipe's Sinkhorn epsilon."""
    bundle = digits()
    torch.manual_seed(seed)
    backbone, dim = build_backbone("small", bundle.channels, False)
    method = build_method("swav", backbone, dim, n_prototypes=PROTOTYPES, queue_size=0,
                          freeze_prototypes_steps=STEPS_PER_EPOCH)
    if epsilon is not None:
        method.epsilon = epsilon  # read at every forward
    views = view_plan("swav", image_size=16, channels=bundle.channels, flip=bundle.flip, small_crops=4)
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    return method, views, x, torch.tensor(bundle.mean), torch.tensor(bundle.std)


def _code_entropy(method, x, view, mean, std, g) -> float:
    """Mean row entropy of the Sinkhorn codes of one augmented batch, over ln K (1 = uniform codes)."""
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(augment(x, view.cfg, view.size, mean, std, g))), dim=1)
        q = AF.sinkhorn(method.prototypes(z), method.epsilon, method.iterations)
    return float(-(q * q.clamp_min(1e-30).log()).sum(1).mean()) / math.log(q.shape[1])


def _train(method, views, x, mean, std, steps: int, seed: int) -> float:
    """``steps`` steps as the driver takes them; returns the code entropy of a fresh view of the first batch."""
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    method.train()
    for step in range(steps):
        i = step % STEPS_PER_EPOCH
        batch = x[order[i * BATCH:(i + 1) * BATCH]]
        method.on_step(step, steps)
        loss = method(*[augment(batch, v.cfg, v.size, mean, std, g) for v in views])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward()
        opt.step()
    return _code_entropy(method, x[order[:BATCH]], views[0], mean, std, g)


def test_recipe_codes_start_peaked():
    # At initialisation the recipe's codes are far from uniform (0.47 ln K; the paper's 0.05 gives 0.83 ln K,
    # the flat start from which the collapse below begins).
    method, views, x, mean, std = _recipe(0)
    method.train()
    method.on_step(0, 1)  # as before the driver's first step: unit-length prototypes
    g = torch.Generator().manual_seed(0)
    assert _code_entropy(method, x[:BATCH], views[0], mean, std, g) < 0.6
    method.epsilon = PAPER_EPSILON
    assert _code_entropy(method, x[:BATCH], views[0], mean, std, g) > 0.75


@pytest.mark.slow
def test_recipe_codes_do_not_collapse_to_uniform():
    # 20 steps = the driver's first 2 epochs on digits (the first one with frozen prototypes).
    method, views, x, mean, std = _recipe(0)
    entropy = _train(method, views, x, mean, std, steps=20, seed=0)
    assert entropy < 0.9, f"SwAV's codes collapsed towards the uniform assignment: entropy {entropy:.3f} ln K"


@pytest.mark.slow
def test_paper_epsilon_collapses_the_same_run():
    # The control: with epsilon 0.05 the same 20 steps end with uniform codes (0.98-0.99 ln K).
    method, views, x, mean, std = _recipe(0, epsilon=PAPER_EPSILON)
    entropy = _train(method, views, x, mean, std, steps=20, seed=0)
    assert entropy > 0.95, f"epsilon {PAPER_EPSILON} no longer collapses here: entropy {entropy:.3f} ln K"


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.skipif(not (BENCH / "seed_table.py").is_file(),
                    reason="benchmarks/ is not beside tests/ (an sdist ships the package and tests only)")
def test_seed_table_writes_the_random_init_row_and_the_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location("augcl_bench_seed_table", BENCH / "seed_table.py")
    seed_table = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = seed_table
    spec.loader.exec_module(seed_table)
    runs, out = tmp_path / "runs", tmp_path / "results"
    # Finished runs (metrics.json present) are read, not run again: the table is made from these three.
    for seed, knn, init in ((0, 0.88, 0.78), (1, 0.88, 0.84), (2, 0.85, 0.75)):
        run = runs / f"swav-baseline-edefault-s{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "epochs": 10, "backbone": "small", "config": {"batch_size": 128}, "knn_top1": knn, "linear_top1": 0.99,
            "random_init_knn_top1": init, "random_init_linear_top1": 0.98, "final_loss": 3.9, "train_time_s": 20.0,
            "wall_time_s": 25.0, "augcl_backend": "cpu", "num_train": 1347}))
    assert seed_table.main(["--methods", "swav", "--variants", "baseline", "--runs", str(runs), "--out", str(out),
                            "--name", "swav_digits"]) == 0
    (md,) = out.glob("swav_digits_*.md")
    (csv_path,) = out.glob("swav_digits_*.csv")
    text = md.read_text()
    assert "| random-init encoder | - | 79.0 ± 4.6 | 98.0 ± 0.0 | - |" in text
    assert "| swav | baseline | 87.0 ± 1.7 | 99.0 ± 0.0 | 20 | 1.00x |" in text  # 20 s / (1347 // 128 * 10 steps)
    assert "step time vs swav baseline |" in text
    assert "--name swav_digits" in text and csv_path.name in text
    assert len(csv_path.read_text().splitlines()) == 4  # header + one row per seed
