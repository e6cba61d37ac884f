"""Tiny twins of the published InternVL checkpoints, one per LLM family (see families.py)."""
