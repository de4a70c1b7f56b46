"""A Sphinx extension for the book's pages (`sphinx.extra_extensions` in book/_config.yml).

Jupyter Book 1 registers sphinx-thebe's inline configuration script twice, so every page logged
"Identifier 'THEBE_JS_URL' has already been declared". Each page keeps one copy of every script.
"""
from __future__ import annotations


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop the repeats of a script from the page's script list (Sphinx's assets compare by value)."""
    scripts = context.get("script_files")
    if scripts:
        kept = []
        for script in scripts:
            if script not in kept:
                kept.append(script)
        context["script_files"] = kept


def setup(app) -> dict:
    app.connect("html-page-context", unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
