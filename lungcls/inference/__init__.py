"""Using a model: the one prediction loop every command shares, decisions and screening thresholds,
and scoring images with a loaded checkpoint (predict, serve, export)."""
