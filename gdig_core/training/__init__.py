"""Models and their training: loading (full or tiny), LoRA finetuning with checkpoints that resume,
and the per-example target loss every other wing builds on (``losses``, ``nll``).

May import: ``config``, ``data``, ``io``, ``integrity``.
"""
