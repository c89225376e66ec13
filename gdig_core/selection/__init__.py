"""Selection (design section 3, steps 5-7): quality rule, gradient k-means, cluster-balanced
resampling, the baselines, and the files that record every decision.

The package, one job per module:

- :mod:`~gdig_core.selection.quality`: eligibility and the quality set (step 5).
- :mod:`~gdig_core.selection.clustering`: k-means and round robin (step 6), on plain arrays.
- :mod:`~gdig_core.selection.registry`: the methods by name; :mod:`~gdig_core.selection.methods`
  the built-in ones (gdig, quality, diversity, random, full, nll, the text filters, oracle), one
  registered function each; :mod:`~gdig_core.selection.plan` what a method returns and the
  pieces methods share; :mod:`~gdig_core.selection.context` the pool's texts and labels.
- :mod:`~gdig_core.selection.outputs`: the tables and the summary; :mod:`~gdig_core.selection.plots`
  the PNGs (plain arrays in); :mod:`~gdig_core.selection.layout` the directory layout and file names.
- :mod:`~gdig_core.selection.run`: :func:`select` (decide and write), :func:`plan_selection`
  (decide only), :func:`selection_plan` and :func:`run_selection` (every method and budget).

A method runs as a :class:`~gdig_core.config.MethodSpec`: a name (its directory), a registered
kind, and optional overrides (score variant, quality rule, tau, top_k, seed...) and cheap
pre-filters whose rejects are not eligible. Adding a method: ``docs/extending.md``.

Public API: :func:`select`, :func:`run_selection`, :func:`selection_plan`, :func:`quality_mask`,
:func:`quality_rank`, :func:`kmeans_clusters`, :func:`round_robin`, :func:`selection_dir`,
:func:`register`.
"""

from gdig_core.selection.clustering import (
    ClusterResult,
    kmeans_clusters,
    renumber_by_rank,
    resolve_n_clusters,
    round_robin,
    within_cluster_rank,
)
from gdig_core.selection.context import PAIR_COLUMNS, PairContext, pair_context
from gdig_core.selection.layout import OUTPUT_FILES, STATUSES, selection_dir, selection_dirs
from gdig_core.selection.methods import TEXT_FILTERS
from gdig_core.selection.outputs import score_stats
from gdig_core.selection.plan import MethodInput, Plan
from gdig_core.selection.quality import (
    QualityResult,
    SelectionError,
    eligible_mask,
    id_order,
    quality_mask,
    quality_rank,
    rank_by_benefit,
)
from gdig_core.selection.registry import REGISTRY, get_method, method_names, register
from gdig_core.selection.run import (
    SelectionResult,
    effective_config,
    plan_selection,
    run_selection,
    select,
    selection_plan,
)

__all__ = [
    "OUTPUT_FILES",
    "PAIR_COLUMNS",
    "REGISTRY",
    "STATUSES",
    "TEXT_FILTERS",
    "ClusterResult",
    "MethodInput",
    "PairContext",
    "Plan",
    "QualityResult",
    "SelectionError",
    "SelectionResult",
    "effective_config",
    "eligible_mask",
    "get_method",
    "id_order",
    "kmeans_clusters",
    "method_names",
    "pair_context",
    "plan_selection",
    "quality_mask",
    "quality_rank",
    "rank_by_benefit",
    "register",
    "renumber_by_rank",
    "resolve_n_clusters",
    "round_robin",
    "run_selection",
    "score_stats",
    "select",
    "selection_dir",
    "selection_dirs",
    "selection_plan",
    "within_cluster_rank",
]
