"""Selection (design section 3, steps 5-7): the quality rule (``quality``), gradient k-means and
round robin (``clustering``), the registered methods and baselines (``registry``, ``methods``,
``plan``, ``context``), and the files that record every decision (``outputs``, ``plots``,
``layout``); ``run`` decides and writes (:func:`select`, :func:`run_selection`). A method runs as a
:class:`~gdig_core.config.MethodSpec`; adding one: ``docs/extending.md``.

May import: ``config``, ``data``, ``influence`` (score tables), ``filters``, ``io``.
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
