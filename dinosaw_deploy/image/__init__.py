"""Layer 1 — images: lazy region readers, the intensity rule, OME writers."""
