"""Choose the tracked nn.Linear layers and capture their inputs ``a`` and output gradients ``g``.

For a linear layer ``y = W a (+ b)`` applied at every position t of a sequence, the gradient of a
loss with respect to W is ``sum_t g_t a_t^T`` with ``g_t = dloss/dy_t``. Everything downstream
(curvature statistics, per-example gradients, scores, features) is built from the pair
``a`` [B, T, in] and ``g`` [B, T, out] that :class:`LayerCapture` hands to a callback, one layer
at a time, during the backward pass. A layer with a bias gets a constant 1 appended to ``a``
(so ``in`` counts it), exactly as kronfluence does.

Speed: :func:`frozen_params` turns off ``requires_grad`` for every parameter; the capture then
makes the output of the earliest tracked layers a fresh leaf that requires grad. Backward thus
computes only activation gradients from the loss down to the earliest tracked layer, and no
weight gradient at all.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gdig_core.config import CurvatureConfig
from gdig_core.training.losses import example_losses

#: What gdig_core.data.encoding.iter_batches yields and every statistics or scoring pass consumes:
#: (ids, model inputs) per batch.
Batches = Iterable[tuple[list[str], dict[str, Tensor]]]


#: Default tracked layers: every MLP projection (Llama, Gemma, Qwen names).
MLP_PATTERNS: list[str] = ["*mlp.gate_proj", "*mlp.up_proj", "*mlp.down_proj"]


#: The official G-DIG code tracks only the MLP output projection of every third block.
GDIG_OFFICIAL_PATTERNS: list[str] = ["*mlp.down_proj", "*mlp.dense_4h_to_h"]


GDIG_OFFICIAL_EVERY = 3


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


#: Callback ``(name, a [B, T, in], g [B, T, out]) -> None``; tensors are detached.
LayerCallback = Callable[[str, Tensor, Tensor], None]


def layer_index(name: str) -> int | None:
    """The block index in a module name such as ``model.layers.12.mlp.down_proj`` (12)."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def select_tracked_modules(model: nn.Module, cfg: CurvatureConfig) -> dict[str, nn.Linear]:
    """The tracked nn.Linear layers of ``model`` by name, in module order.

    ``preset``: ``mlp`` (every MLP projection; ``modules`` must keep its default), ``gdig-official``
    (``mlp.down_proj`` of blocks 0, 3, 6, ...), or ``custom`` (fnmatch patterns in ``modules``).
    Raises ValueError when nothing matches or a pattern names a non-Linear module.
    """
    if cfg.preset == "mlp":
        if list(cfg.modules) != MLP_PATTERNS:
            raise ValueError("curvature.modules is set but curvature.preset is 'mlp': use preset 'custom'")
        patterns = MLP_PATTERNS
    elif cfg.preset == "gdig-official":
        patterns = GDIG_OFFICIAL_PATTERNS
    else:
        patterns = list(cfg.modules)
    tracked: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"tracked module {name!r} is a {type(module).__name__}, not nn.Linear")
        if cfg.preset == "gdig-official":
            idx = layer_index(name)
            if idx is None or idx % GDIG_OFFICIAL_EVERY != 0:
                continue
        tracked[name] = module
    if not tracked:
        raise ValueError(f"no nn.Linear module matches {patterns} (preset {cfg.preset!r})")
    return tracked


def layer_shape(module: nn.Linear) -> tuple[int, int]:
    """(out, in) of the layer's gradient, ``in`` including the bias column when there is one."""
    return module.out_features, module.in_features + (1 if module.bias is not None else 0)


@contextlib.contextmanager
def frozen_params(model: nn.Module) -> Iterator[None]:
    """Turn off requires_grad on every parameter for the block, then restore the flags."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class LayerCapture:
    """Context manager that calls ``callback(name, a, g)`` for each tracked layer in backward.

    ``a`` is the layer input [B, T, in] (a ones column appended when the layer has a bias) and
    ``g`` the gradient of the backpropagated scalar with respect to the layer output [B, T, out].
    The input is held only until that layer's gradient arrives, so at most the tracked inputs
    of one forward pass are alive at once. Inputs are kept in their forward dtype (bf16 under
    autocast); callbacks choose their own compute dtype.

    Use with :func:`frozen_params`: an output that does not require grad is replaced by a detached
    leaf that does, so backward stops at the earliest tracked layer. Gradient checkpointing
    (which re-runs forward hooks) is not supported.
    """

    def __init__(self, tracked: dict[str, nn.Linear], callback: LayerCallback) -> None:
        self.tracked = tracked
        self.callback = callback
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _forward_hook(self, name: str, module: nn.Linear) -> Callable:
        def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if not torch.is_grad_enabled():
                return None
            a = inputs[0].detach()
            if module.bias is not None:
                a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
            replaced = None
            if not output.requires_grad:
                output = output.detach().requires_grad_(True)
                replaced = output

            def grad_hook(g: Tensor, a: Tensor = a) -> None:
                self.callback(name, a, g.detach())

            output.register_hook(grad_hook)
            return replaced

        return hook

    def __enter__(self) -> LayerCapture:
        for name, module in self.tracked.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name, module)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@dataclass
class BatchContext:
    """What the layer callbacks of :func:`capture_batches` know about the batch in flight.

    ``token_mask`` [B, T] is True at positions that may contribute: real (non-pad) tokens of
    examples whose loss is usable. ``all_valid`` says every position is (no padding, no bad
    example), so callbacks may skip masking. ``ok`` [B] is False for an example with a non-finite
    loss or no target token; ``reasons`` says why. ``loss_sum`` [B] is the summed target-token
    cross-entropy and ``n_tokens`` [B] the number of target tokens (both detached).
    """

    ids: list[str]
    token_mask: Tensor
    ok: Tensor
    reasons: list[str | None]
    loss_sum: Tensor
    n_tokens: Tensor
    all_valid: bool = False


#: Callback ``(ctx, name, a [B, T, in], g [B, T, out]) -> None`` used by :func:`capture_batches`.
BatchLayerCallback = Callable[[BatchContext, str, Tensor, Tensor], None]


def example_seed(base: int, example_id: str) -> int:
    """A 63-bit seed for one example, stable across processes, shards and batch orders."""
    digest = hashlib.sha256(f"{base}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()  # no dropout: gradients must be a deterministic function of the example
    try:
        yield
    finally:
        model.train(was_training)


def capture_batches(
    model: nn.Module,
    tracked: dict[str, nn.Linear],
    batches: Batches,
    on_layer: BatchLayerCallback,
    *,
    normalisation: str = "sequence",
    sampling_seed: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Iterator[BatchContext]:
    """Run forward + backward over ``batches``, calling ``on_layer`` per tracked layer; yield each batch.

    The backpropagated scalar is the sum over usable examples of the example loss: its summed
    target-token cross-entropy (``normalisation="sequence"``, kronfluence's convention) or that sum
    divided by its target-token count (``"token"``). Because examples do not interact in a causal
    LM, ``g[b]`` is then the output gradient of example b's own loss. Examples with a non-finite
    loss are left out of the scalar and marked in ``ctx.ok``; rows of such examples in ``a``/``g``
    may hold anything and must be masked with ``ctx.token_mask``. With ``sampling_seed`` the labels
    are sampled from the model (true Fisher), one seeded generator per example id.
    All parameters are frozen during the pass (see :class:`LayerCapture`).
    """
    if normalisation not in ("sequence", "token"):
        raise ValueError(f"unknown loss normalisation {normalisation!r}")
    state: dict[str, BatchContext] = {}

    def callback(name: str, a: Tensor, g: Tensor) -> None:
        on_layer(state["ctx"], name, a, g)

    with _eval_mode(model), frozen_params(model), LayerCapture(tracked, callback):
        for ids, batch in batches:
            ids = [str(i) for i in ids]
            seeds = None if sampling_seed is None else [example_seed(sampling_seed, i) for i in ids]
            loss_sum, n_tok = example_losses(model, batch, seeds, autocast_dtype)
            ok = torch.isfinite(loss_sum) & (n_tok > 0)
            reasons: list[str | None] = []
            for finite, n in zip(torch.isfinite(loss_sum).tolist(), n_tok.tolist(), strict=True):
                reasons.append(
                    None if finite and n > 0 else ("no_target_tokens" if n == 0 else "nonfinite_loss")
                )
            attn = batch["attention_mask"].to(loss_sum.device).bool()
            token_mask = attn & ok[:, None]
            ctx = BatchContext(
                ids=ids,
                token_mask=token_mask,
                ok=ok,
                reasons=reasons,
                loss_sum=loss_sum.detach(),
                n_tokens=n_tok,
                all_valid=bool(token_mask.all()),
            )
            state["ctx"] = ctx
            per_example = loss_sum if normalisation == "sequence" else loss_sum / n_tok.clamp(min=1)
            objective = torch.where(ok, per_example, torch.zeros_like(per_example)).sum()
            if bool(ok.any()) and objective.requires_grad:
                objective.backward()
            yield ctx
