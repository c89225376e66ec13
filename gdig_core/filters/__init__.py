"""Per-pair quality scores that need no gradients: the hand-written rules (``rules``), OpusFilter's
standard chain (``opusfilter``) and the LLM's dual cross-entropy QE score (``qe``).

Selection methods and pre-filters use them. May import: ``config``, ``training``, ``io``, ``integrity``.
"""
