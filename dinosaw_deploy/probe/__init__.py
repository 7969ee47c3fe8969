"""Layer 4 — the positional-bias probe and the roll-equivariance check."""
