"""Which template a checkpoint uses, and its exact strings, without running its code.

Why: the published checkpoints ship their own `conversation.py` (remote code) and
`model.chat` uses *that* file's definition of the template named in config.json. The
files differ between releases (Mini-InternVL-Chat-4B-V1-5's `phi3-chat` has another
system message than InternVL2-4B's), so when the file is there its literal arguments are
read with `ast` (nothing is executed); otherwise the built-in definitions apply.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from internvl_batch.model.templates import DEFAULT_TEMPLATE, Template, UnknownTemplateError, get_template

CONVERSATION_FILE = "conversation.py"
# Conversation(...) defaults, from InternVL's conversation.py
_DEFAULTS = {"system_template": "{system_message}", "system_message": "", "sep": "\n"}


class TemplateError(ValueError):
    """The template can't be resolved; the message says what to set."""


def _call_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal(node: ast.expr):
    # Implicitly concatenated literals are one Constant; explicit `'a' + 'b'` is a BinOp.
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left) + _literal(node.right)
    return ast.literal_eval(node)


def read_conversation_file(source: str) -> dict[str, Template | str]:
    """Every registered template: a Template for MPT-style ones, else the style's name."""
    found: dict[str, Template | str] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and _call_name(node.func) == "register_conv_template" and node.args):
            continue
        conv = node.args[0]
        if not (isinstance(conv, ast.Call) and _call_name(conv.func) == "Conversation"):
            continue
        kw = {k.arg: k.value for k in conv.keywords if k.arg}
        try:
            name = _literal(kw["name"])
            style = _call_name(kw["sep_style"]) if "sep_style" in kw else "ADD_COLON_SINGLE"
            if style != "MPT":
                found[name] = style
                continue
            fields = {k: _literal(kw[k]) if k in kw else v for k, v in _DEFAULTS.items()}
            roles = tuple(_literal(kw["roles"]))
        except (KeyError, ValueError, TypeError, SyntaxError):
            continue  # not plain literals: leave it to the built-in definition
        found[name] = Template(name=name, roles=roles, **fields)  # type: ignore[arg-type]
    return found


def config_template_name(config: dict) -> str | None:
    """The template a checkpoint's config.json names (transformers' own layout has none)."""
    if config.get("model_type") == "internvl":
        return DEFAULT_TEMPLATE  # only InternVL3+ are published in that layout
    return config.get("template")


def resolve_template(model_dir: str | Path, override: str | None = None) -> Template:
    """The checkpoint's template: `override` (model.template) or config.json's `template`,
    defined by the checkpoint's conversation.py when it has one, else built in."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    name = override or config_template_name(config)
    if not name:
        raise TemplateError(f"{config_file} names no `template`; set model.template (e.g. {DEFAULT_TEMPLATE!r})")
    conv_file = model_dir / CONVERSATION_FILE
    if conv_file.exists():
        defined = read_conversation_file(conv_file.read_text(encoding="utf-8")).get(name)
        if isinstance(defined, Template):
            return defined
        if isinstance(defined, str):
            raise TemplateError(
                f"template {name!r} in {conv_file} has separator style {defined}, not MPT; "
                "only InternVL 1.5+ templates are supported (model.template)"
            )
    try:
        return get_template(name)
    except UnknownTemplateError as e:
        raise TemplateError(f"{e}; set model.template") from None
