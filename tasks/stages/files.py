"""Names of the files the curvature and preconditioning stages write, and which preconditioners a
config needs: shared by the stages, the shard workers and the pin checks (no Prefect here)."""

from __future__ import annotations

from gdig_core.config import GdigConfig


def needed_methods(cfg: GdigConfig) -> list[str]:
    """The preconditioners the score variants read, primary first."""
    from gdig_core.influence.variants import curvature_methods, score_variants

    return curvature_methods(score_variants(cfg.curvature.method, cfg.scoring.variants))


def factor_file(method: str) -> str:
    """The curvature stage's output file for one preconditioner."""
    return f"factors-{method}.safetensors"


def projected_factor_file(method: str) -> str:
    """The same preconditioner fitted on the gradient store's projected gradients."""
    return f"projected-factors-{method}.safetensors"


def scoring_factor_file(cfg: GdigConfig, method: str) -> str:
    """The factor file the configured scoring path reads for one preconditioner."""
    return projected_factor_file(method) if cfg.scoring.path == "store" else factor_file(method)


def precond_file(method: str) -> str:
    """The preconditioning stage's output file for one preconditioner."""
    return f"precond-{method}.safetensors"


def required_factor_files(cfg: GdigConfig) -> list[str]:
    """The factor files the score variants (and, when enabled, the gradient store) read."""
    files = [factor_file(m) for m in needed_methods(cfg)]
    if cfg.scoring.store.enabled:
        files += [projected_factor_file(m) for m in needed_methods(cfg)]
    return files
