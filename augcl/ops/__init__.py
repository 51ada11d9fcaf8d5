"""torch.library registrations of augcl's ops and their dispatching entry points (one module per op)."""
