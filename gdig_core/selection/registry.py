"""The selection methods by name: adding a method is one registered function.

A method is a function ``plan(inp: MethodInput) -> Plan`` (:mod:`gdig_core.selection.plan`)
registered under the name a :class:`~gdig_core.config.MethodSpec`'s ``method`` field uses::

    @register("shortest_target")
    def _shortest(inp: MethodInput) -> Plan:
        words = np.array([len(t.split()) for t in inp.ctx.tgt], dtype=np.float64)
        return ranked_plan(-words, inp.q, inp.budget, inp.tie, "shortest target")

The built-in methods are in :mod:`gdig_core.selection.methods`; importing
:mod:`gdig_core.selection` registers them. ``docs/extending.md`` walks through a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PlanFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Method:
    """A registered selection method and what the pipeline needs to know about it."""

    name: str
    plan: PlanFn
    #: False: the method selects the same set at every budget (``full``); it runs once, at the
    #: largest budget, into ``<name>/all``.
    uses_budget: bool = True
    #: True: the method reads every row's noise label (``oracle``); the preflight refuses a run
    #: whose pool has none before any work.
    needs_noise_labels: bool = False


REGISTRY: dict[str, Method] = {}


def register(name: str, *, uses_budget: bool = True, needs_noise_labels: bool = False) -> Callable[[PlanFn], PlanFn]:
    """Register ``plan`` as the selection method ``name`` (a decorator)."""

    def deco(plan: PlanFn) -> PlanFn:
        REGISTRY[name] = Method(name, plan, uses_budget, needs_noise_labels)
        return plan

    return deco


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (the built-ins first)."""
    return tuple(REGISTRY)


def get_method(name: str) -> Method | None:
    return REGISTRY.get(name)


def uses_budget(kind: str) -> bool:
    """Whether a method of ``kind`` depends on the budget (unknown kinds: yes)."""
    method = REGISTRY.get(kind)
    return method.uses_budget if method is not None else True
