"""Before a run: which rows and how each would fare (`sample`, `rows`: the check `validate`
and `plan` share), what the run will cost (`estimate`: the `plan` verb), and whether its
answers are the checkpoint's own (`verify`, against `reference`: model.chat or the HF
reference engine)."""
