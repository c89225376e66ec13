"""Paired significance of one selection method against another on the same test set: sacrebleu's
own paired bootstrap resampling (``sacrebleu.significance.PairedTest``, test type ``bs``).

Per finetuning seed, system seed s is compared with baseline seed s on the same sentences. Over
the seeds, the seeds both methods share are concatenated (system seed s beside baseline seed s,
the references repeated), so a resample draws (seed, sentence) units and the seed-to-seed spread
counts as noise too. sacrebleu's test is two-sided: the p-value is the chance of a difference at
least this large in absolute value when the systems are equally good; the sign of ``delta`` says
which is better. sacrebleu seeds its resampling (``SACREBLEU_SEED``, 12345 by default), so the
same hypotheses give the same p-values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from gdig_core.evaluation.metrics import bleu_tokenizer

#: Resamples per test (sacrebleu's own default for the bootstrap).
N_SAMPLES = 1000
SIGNIFICANCE_LEVEL = 0.05


def _metrics(tgt_lang: str) -> dict[str, Any]:
    """The corpus metrics of gdig_core.evaluation.metrics, keyed as PairedTest keys its results (the
    metrics' own names, e.g. ``BLEU`` and ``chrF2``); ours by our names."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(tokenize=bleu_tokenizer(tgt_lang)[0]), "chrf": CHRF()}


def paired_bootstrap(
    system: Sequence[str], baseline: Sequence[str], references: Sequence[str], tgt_lang: str,
    n_samples: int = N_SAMPLES,
) -> dict[str, dict[str, float]]:
    """``{metric: {system_score, baseline_score, delta, p_value, ci}}`` for BLEU and chrF (``ci``:
    half-width of the system's 95% bootstrap interval). Identical hypotheses get ``p_value`` 1:
    sacrebleu's test would give them its smallest p-value, and two methods that selected the same
    pairs share one cached model, so this is a real case; likewise equal corpus scores."""
    from sacrebleu.significance import PairedTest

    if not (len(system) == len(baseline) == len(references)) or not references:
        raise ValueError(f"paired test needs equal, non-empty lists: {len(system)} system, {len(baseline)} "
                         f"baseline, {len(references)} references")
    quiet = logging.getLogger("sacrebleu")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every step at INFO
    metrics = _metrics(tgt_lang)
    try:
        test = PairedTest([("baseline", list(baseline)), ("system", list(system))], metrics,
                          [list(references)], test_type="bs", n_samples=n_samples)
        _, results = test()
    finally:
        quiet.setLevel(level)
    # Results come in the order of ``metrics``, after the "System" column.
    by_name = dict(zip(metrics, [k for k in results if k != "System"], strict=True))
    out: dict[str, dict[str, float]] = {}
    for metric, key in by_name.items():
        base, sys_ = results[key][0], results[key][1]
        # No difference at all (the same hypotheses, or both scoring 0 on every resample):
        # sacrebleu's centred test would call it significant at its smallest p-value.
        same = list(system) == list(baseline) or sys_.score == base.score
        out[metric] = {"system_score": float(sys_.score), "baseline_score": float(base.score),
                       "delta": float(sys_.score - base.score), "p_value": 1.0 if same else float(sys_.p_value),
                       "ci": float(sys_.ci) if sys_.ci is not None else float("nan")}
    return out


#: Hypotheses of one method: finetuning seed -> test set -> lines.
MethodHyps = Mapping[int, Mapping[str, Sequence[str]]]


def compare_methods(
    system: MethodHyps, baseline: MethodHyps, references: Mapping[str, Sequence[str]], tgt_lang: str,
    n_samples: int = N_SAMPLES,
) -> list[dict[str, Any]]:
    """One row per test set and metric and per shared seed, plus ``seed: "all"`` over the shared
    seeds (module doc). Test sets missing for a seed are skipped."""
    seeds = sorted(set(system) & set(baseline))
    rows: list[dict[str, Any]] = []
    for test, refs in references.items():
        usable = [s for s in seeds if test in system[s] and test in baseline[s]]
        runs = [(str(s), [s]) for s in usable] + ([("all", usable)] if len(usable) > 1 else [])
        for label, group in runs:
            sys_lines = [h for s in group for h in system[s][test]]
            base_lines = [h for s in group for h in baseline[s][test]]
            result = paired_bootstrap(sys_lines, base_lines, list(refs) * len(group), tgt_lang, n_samples)
            for metric, r in result.items():
                rows.append({"test": test, "metric": metric, "seed": label, "sentences": len(sys_lines), **r})
    return rows


def verdict_word(delta: float, p_value: float, level: float = SIGNIFICANCE_LEVEL) -> str:
    """``better``/``worse`` when significant at ``level``, else ``no significant difference``."""
    if p_value >= level or delta == 0:
        return "no significant difference"
    return "better" if delta > 0 else "worse"
