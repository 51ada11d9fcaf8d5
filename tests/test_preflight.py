"""benchmarks/preflight.py: every Triton kernel compiles for a real GPU (sm_90) at the configurations its
launcher picks, within the shared-memory and register limits. The interpreter tests cannot show this."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "preflight.py")
KERNELS = [
    "_contrastive_lse_fwd_kernel", "_contrastive_lse_bwd_da_kernel", "_contrastive_lse_bwd_dc_kernel",
    "_fused_fwd_kernel", "_linear_fwd_kernel", "_linear_dgrad_kernel", "_linear_wgrad_kernel",
    "_sinkhorn_single_program_kernel", "_row_lse_kernel", "_col_lse_kernel", "_codes_kernel",
    "_soft_ce_fwd_kernel", "_soft_ce_bwd_kernel", "_mix_images_fwd_kernel", "_mix_images_bwd_kernel",
]


def _run(tmp_path, *args):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, SCRIPT, "--no-csv", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    if "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip(f"no ptxas to compile for a GPU here: {proc.stderr.strip().splitlines()[-1]}")
    return proc


def test_every_triton_kernel_compiles_for_sm90_within_limits(tmp_path):
    proc = _run(tmp_path, "--quick", "--arch", "90")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # not vacuous: every kernel was reached by some case and compiled
    compiled = {line.split()[1] for line in proc.stdout.splitlines() if line.strip().startswith("sm_90")}
    assert set(KERNELS) <= compiled, sorted(set(KERNELS) - compiled)
    assert " 0 FAIL" in proc.stdout
    # the performance candidates of benchmarks/gpu_candidates.py with the most state per program compile too
    for case in ("AUGCL_CONTRASTIVE_TILES=128x128", "AUGCL_CONTRASTIVE_BWD_DO=512", "AUGCL_TRITON_FP32=tf32x3"):
        assert f"candidate {case} " in proc.stdout, case


def test_large_tile_candidate_fits_an_a100(tmp_path):
    """128 x 128 tiles with fp32 operands at D = 128: three pipelined stages needed 257 KiB of shared memory; the
    forward's stages are capped so that it fits an A100's 164 KiB (and an H100's 227 KiB)."""
    proc = _run(tmp_path, "--only", "TILES=128x128 contrastive d=128 fp32+tf32", "--arch", "80,90")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " 0 FAIL" in proc.stdout and "sm_80  _contrastive_lse_fwd_kernel" in proc.stdout


def test_preflight_fails_a_kernel_over_the_shared_memory_limit(tmp_path):
    """The limit check itself: with a 4 KiB budget the contrastive forward (tens of KiB) must be reported."""
    proc = _run(tmp_path, "--only", "contrastive d=128 fp16 contig", "--arch", "90", "--shared-limit", "4096")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL sm_90 _contrastive_lse_fwd_kernel" in proc.stdout
    assert "shared memory" in proc.stdout
