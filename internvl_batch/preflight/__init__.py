"""Before a run: what it will cost (`estimate`: the `plan` verb), and whether its answers are
the checkpoint's own (`verify`, against `reference`: model.chat or the HF reference engine)."""
