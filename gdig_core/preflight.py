"""Checks that can run before any work starts, so that a missing or misaligned test set, an
unknown language code or a missing dataset fails in seconds with its key path, not after the
reference model, scoring and every finetune have run.

The config model itself (``gdig_core.config``) checks types, ranges, names and the prompt
template when it is loaded; this module checks what needs the file system.
"""

from __future__ import annotations

from pathlib import Path

from gdig_core.config import ConfigError, DatasetSpec, GdigConfig, resolve_data_path


def _missing_files(cfg: GdigConfig, key: str, spec: DatasetSpec) -> list[str]:
    problems = []
    for field, value in (("path", spec.path), ("tgt_path", spec.tgt_path)):
        if value is None:
            continue
        path = resolve_data_path(cfg.data, value)
        if not path.exists():
            problems.append(f"{key}.{field}: {path}: no such file or directory")
    return problems


def _language_problems(cfg: GdigConfig, key: str, codes: dict[str, str | None]) -> list[str]:
    problems = []
    for field, code in codes.items():
        if code is None:
            continue
        try:
            cfg.language_name(code)
        except ConfigError:
            problems.append(f"{key}.{field}: no language name for {code!r}; add it under prompt.language_names")
    return problems


def _opusfilter_problems(cfg: GdigConfig) -> list[str]:
    """Methods that use OpusFilter's chain when the library (an optional extra) is missing, or
    when no script is known for a language."""
    users = [(i, m) for i, m in enumerate(cfg.selection.methods) if m.method == "opusfilter" or "opusfilter" in m.prefilter]
    if not users:
        return []
    from gdig_core.filters.opusfilter import INSTALL_HINT, SCRIPTS, OpusFilterUnavailable, build_chain

    i, m = users[0]
    key = f"selection.methods.{i} ({m.name})"
    unknown = [lang for lang in (cfg.data.src_lang, cfg.data.tgt_lang) if lang not in SCRIPTS]
    if unknown:
        return [f"{key}: opusfilter knows no script for language {unknown[0]!r}; have {sorted(SCRIPTS)}"]
    try:
        build_chain(cfg.data.src_lang, cfg.data.tgt_lang)
    except OpusFilterUnavailable:
        return [f"{key}: {INSTALL_HINT}"]
    return []


def preflight_problems(cfg: GdigConfig) -> list[str]:
    """Every problem found, each starting with its key path (empty when the run can start)."""
    from gdig_core.data.pairs import DataError
    from gdig_core.data.readers import read_dataset
    from gdig_core.selection import method_names

    known = method_names()
    problems = [f"selection.methods.{i} ({m.name}).method: unknown selection method {m.method!r}; "
                f"expected one of {', '.join(known)}" for i, m in enumerate(cfg.selection.methods) if m.method not in known]
    problems += _opusfilter_problems(cfg)
    problems += _language_problems(cfg, "data", {"src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang})
    for role in ("pool", "seed"):
        spec: DatasetSpec = getattr(cfg.data, role)
        problems += _missing_files(cfg, f"data.{role}", spec)
        problems += _language_problems(cfg, f"data.{role}", {"src_lang": spec.src_lang, "tgt_lang": spec.tgt_lang})
    if cfg.evaluation.enabled:
        for i, spec in enumerate(cfg.evaluation.test_sets):
            key = f"evaluation.test_sets.{i} ({spec.name})"
            missing = _missing_files(cfg, key, spec)
            problems += missing
            problems += _language_problems(cfg, key, {"src_lang": spec.src_lang, "tgt_lang": spec.tgt_lang})
            if missing:
                continue
            # Test sets are small (a few thousand lines): reading them is the alignment check,
            # and it finds a bad line exactly where evaluation would.
            try:
                read_dataset(spec, cfg.data, "test", cfg.prompt.language_names)
            except DataError as err:
                problems.append(f"{key}: {err}")
        comet = cfg.evaluation.comet_model
        if comet is not None and not Path(comet).exists():
            problems.append(f"evaluation.comet_model: {comet}: no such COMET checkpoint")
    return problems


def preflight(cfg: GdigConfig) -> None:
    """Raise ConfigError listing every problem ``preflight_problems`` finds."""
    problems = preflight_problems(cfg)
    if problems:
        raise ConfigError("the run cannot start:\n  " + "\n  ".join(problems))
