"""BentoML packaging of a model version (torch-free)."""
