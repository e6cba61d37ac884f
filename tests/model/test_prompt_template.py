"""Prompt templates over a row's columns: str.format names, {{ }} braces, nothing else."""

import pytest

from internvl_batch.model.prompt_template import MissingValue, fill, template_fields


def test_fields_and_fill():
    t = "Does this image show a {label}? {{not a field}} Again: {label}, by {photographer name}."
    assert template_fields(t) == ("label", "photographer name")
    assert fill(t, {"label": "cat", "photographer name": "{x}"}) == (
        "Does this image show a cat? {not a field} Again: cat, by {x}."  # a value's braces stay as they are
    )
    assert template_fields("Describe the image.") == () and fill("a {{b}}", {}) == "a {b}"


@pytest.mark.parametrize("bad", ["{}", "{0}", "{a.b}", "{a[0]}", "{a!r}", "{a:>5}", "{", "}", "{a"])
def test_what_a_template_may_not_hold(bad):
    with pytest.raises(ValueError):
        template_fields(bad)


@pytest.mark.parametrize("values", [{}, {"label": None}])
def test_a_missing_or_null_value_names_the_column(values):
    with pytest.raises(MissingValue, match="column 'label'"):
        fill("Is it a {label}?", values)
