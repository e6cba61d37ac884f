"""Before a run: what it will cost (`estimate`: the `plan` verb)."""
