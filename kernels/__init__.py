"""Triton kernels of augcl, installed as ``augcl.kernels``.

Kept import-light on purpose: importing this package imports neither triton nor any kernel module. Import the
operator modules explicitly, e.g. ``augcl.kernels.contrastive``.
"""
