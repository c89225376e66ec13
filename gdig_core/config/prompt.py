"""The fields a prompt template may use, and the check that runs when a config is loaded, so that
an unknown ``{field}`` or a lone brace fails with the key path instead of a KeyError or
ValueError in the middle of encoding."""

from __future__ import annotations

import string

#: What ``encoding.build_prompt`` fills in.
PROMPT_FIELDS = ("src", "src_lang", "tgt_lang", "src_lang_name", "tgt_lang_name")


def check_template(template: str) -> str:
    """Return ``template`` if ``str.format`` can fill it from PROMPT_FIELDS; else raise ValueError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"not a valid template ({err}); write a literal brace as '{{{{' or '}}}}'") from None
    used = set()
    for _, name, spec, _conversion in parsed:
        if name is None:
            continue
        if name == "" or not name.isidentifier():
            raise ValueError(f"'{{{name}}}' is not a field name; known fields: {', '.join(PROMPT_FIELDS)} "
                             "(write a literal brace as '{{' or '}}')")
        if name not in PROMPT_FIELDS:
            raise ValueError(f"unknown field '{{{name}}}'; known fields: {', '.join(PROMPT_FIELDS)}")
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"nested braces in the format spec of '{{{name}}}' are not supported")
        used.add(name)
    if "src" not in used:
        raise ValueError("the prompt template must contain '{src}'")
    return template
