"""Checks that can run before any work starts, so that a missing or misaligned test set, an
unknown language code or a missing dataset fails in seconds with its key path, not after the
reference model, scoring and every finetune have run.

The config model itself (``gdig_core.config``) checks types, ranges, names and the prompt
template when it is loaded; this module checks what needs the file system: every dataset is read
(pool, seed, test sets), and what the selection methods need of the data is there.
"""

from __future__ import annotations

import json
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


def _file_signature(cfg: GdigConfig, specs: list[DatasetSpec]) -> list[tuple[str, int, int]]:
    out = []
    for spec in specs:
        for value in (spec.path, spec.tgt_path):
            if value is not None:
                path = resolve_data_path(cfg.data, value)
                try:
                    st = path.stat()
                    out.append((str(path), st.st_size, st.st_mtime_ns))
                except (OSError, ValueError):
                    out.append((str(path), -1, -1))
    return out


# ``gdig run`` checks before the Prefect server starts and the flow checks again when it begins
# (a deployment's runs start there): a pool read once per process and file state is enough.
_DATA_CHECKED: dict[str, list[str]] = {}


def _data_problems(cfg: GdigConfig) -> list[str]:
    """Read the pool, the seed set and the third-language texts as the data stage will (seconds, a
    fraction of the stage), so bad data fails before the server starts; then what the selection
    methods need of the data (noise labels for the oracle)."""
    from gdig_core.data.pairs import DataError
    from gdig_core.data.readers import read_dataset
    from gdig_core.selection import get_method

    noise = cfg.data.noise
    specs = {"data.pool": (cfg.data.pool, "pool"), "data.seed": (cfg.data.seed, "seed")}
    if noise is not None and noise.third_language is not None:
        specs["data.noise.third_language"] = (noise.third_language, "pool")
    memo = json.dumps([cfg.data.model_dump(mode="json"), cfg.prompt.language_names, cfg.selection.model_dump(mode="json"),
                       _file_signature(cfg, [spec for spec, _ in specs.values()])], sort_keys=True, default=str)
    if memo in _DATA_CHECKED:
        return list(_DATA_CHECKED[memo])
    problems: list[str] = []
    pool = None
    for key, (spec, role) in specs.items():
        if _missing_files(cfg, key, spec):
            continue  # reported with its key path already
        try:
            result = read_dataset(spec, cfg.data, role, cfg.prompt.language_names)
        except DataError as err:
            problems.append(f"{key}: {err}")
            continue
        if key == "data.pool":
            pool = result
    if pool is not None:
        if noise is not None and pool.noise_labels:
            problems.append(f"data.noise: the pool ({pool.stats['file']}) already carries noise labels; data.noise "
                            "would corrupt it twice (remove one)")
        if noise is None and not pool.noise_labels:
            for i, m in enumerate(cfg.selection.methods):
                method = get_method(m.method)
                if method is not None and method.needs_noise_labels:
                    problems.append(
                        f"selection.methods.{i} ({m.name}): the {m.method} method needs noise labels, and the pool "
                        "has none: set data.noise (labelled noise injected into the pool) or use a pool whose rows "
                        "carry a 'noise' label (gdig data corrupt)")
    _DATA_CHECKED[memo] = list(problems)
    return problems


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
    problems += _data_problems(cfg)
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
