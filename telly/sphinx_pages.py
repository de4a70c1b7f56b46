"""A Sphinx extension for the book's pages (`sphinx.extra_extensions` in book/_config.yml).

Jupyter Book 1 registers the inline scripts of sphinx-thebe and sphinx-togglebutton twice (once with
filename None, once with ""), so every page logged "Identifier 'THEBE_JS_URL' has already been
declared". Each page keeps one copy of every script.
"""
from __future__ import annotations


def script_key(script) -> tuple:
    """What makes two script entries the same script: its file (none = "") and its attributes."""
    if isinstance(script, str):
        return (script, ())
    return (str(script.filename or ""), tuple(sorted((k, str(v)) for k, v in script.attributes.items())))


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop the repeats of a script from the page's script list, keeping the first."""
    scripts = context.get("script_files")
    if scripts:
        seen, kept = set(), []
        for script in scripts:
            key = script_key(script)
            if key not in seen:
                seen.add(key)
                kept.append(script)
        context["script_files"] = kept


def setup(app) -> dict:
    app.connect("html-page-context", unique_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
