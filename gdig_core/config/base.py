"""What every config section shares: the strict pydantic base class, the error type, paths and
language names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "mt"


#: Language codes the prompt knows a name for; others need an entry in ``prompt.language_names``.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "zh": "Chinese",
    "cs": "Czech",
    "ru": "Russian",
    "is": "Icelandic",
    "ja": "Japanese",
    "fr": "French",
    "es": "Spanish",
    "uk": "Ukrainian",
    "ha": "Hausa",
}


#: The prompt of the official G-DIG code; ``{tgt_lang_name}`` and ``{src}`` are filled in.
GDIG_PROMPT = 'Translate the following text into {tgt_lang_name}\n\nText:\n"{src}"\n\n'


class ConfigError(ValueError):
    """A configuration problem, with the key path that caused it."""


class Section(BaseModel):
    # strict: YAML's `true` would otherwise be taken as the integer 1, and 2.5 cut to 2.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
