"""Translating with a model and scoring it: generation, BLEU/chrF (sacrebleu), COMET, reference
NLL on test sets, paired significance; and the weak MT system whose output is ``low_quality_mt`` noise.

May import: ``config``, ``data``, ``training``, ``io``, ``names``.
"""
