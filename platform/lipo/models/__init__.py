"""Model loading, response log-probs and tiny in-memory test models."""
