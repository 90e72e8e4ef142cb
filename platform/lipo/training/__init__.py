"""LiPO training: config, the per-worker loop, checkpoints and export."""
