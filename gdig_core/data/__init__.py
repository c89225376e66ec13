"""Pairs in: readers, validation and quarantine of pools, seeds and test sets; labelled noise;
prompt encoding.

Everything leaves as a pyarrow table of ``data.pairs.PAIR_SCHEMA``, written to Parquet for the
later stages. May import: ``config``, ``io``, ``integrity``.
"""
