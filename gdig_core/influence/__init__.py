"""The influence wing: per-example gradients and their curvature.

Hooks capture layer activations and gradients; ``curvature``/``factors`` fit K-FAC/EK-FAC;
``seed_preconditioning`` turns seed gradients into ``H^-1 grad``; ``benefit`` scores candidates
against them into score shards (``scores``); ``features``/``grad_store`` keep the projected
gradients for k-means and rescoring. A new curvature strategy goes in ``preconditioners``.
May import: ``config``, ``training``, ``io``, ``integrity``.
"""
