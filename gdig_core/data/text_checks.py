"""Characters a translation pair must not carry. A lone UTF-16 surrogate (``"\\ud800"``) is valid
JSON but no UTF-8 encodes it: Arrow, the content hashes and every output file refuse it. A
control character (an escaped NUL, ESC, a line break inside a field) survives JSON decoding and
would reach the model and the selected files. Tabs are text in JSON and parallel files: kept."""

from __future__ import annotations

import re
import unicodedata

#: C0 controls but the tab, DEL, C1 controls, and the surrogate range.
_BAD_CHAR = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be kept (its first bad character and where), or None."""
    found = _BAD_CHAR.search(text)
    if found is None:
        return None
    char = found.group()
    code = f"U+{ord(char):04X}"
    if "\ud800" <= char <= "\udfff":
        return f"lone UTF-16 surrogate {code} at character {found.start() + 1} (not encodable as UTF-8)"
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(ord(char), "control")
    return f"control character {code} ({name.lower()}) at character {found.start() + 1}"


# unicodedata has no names for the control characters.
_CONTROL_NAMES = {0x00: "NUL", 0x07: "bell", 0x08: "backspace", 0x0A: "line feed", 0x0B: "vertical tab",
                  0x0C: "form feed", 0x0D: "carriage return", 0x1B: "escape", 0x7F: "delete"}
