"""Ray Data stages: each is a small class with typed resources and logic kept apart."""
