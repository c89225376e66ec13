"""Per-example target loss of a batch: the one forward pass that training, scoring and NLL share.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _sampled_labels(logits: Tensor, labels: Tensor, seeds: list[int]) -> Tensor:
    """Labels drawn from the model's own predictive distribution (true Fisher) at target positions.

    Each example uses its own generator seeded from ``seeds[i]``, so a draw does not depend on
    which shard or batch the example lands in (sharded factor fits stay equal to unsharded ones).
    """
    out = labels.clone()
    for i, seed in enumerate(seeds):
        pos = labels[i] != -100
        if not bool(pos.any()):
            continue
        gen = torch.Generator(device=logits.device)
        gen.manual_seed(seed)
        row = logits[i, pos].float()
        u = torch.rand(row.shape, generator=gen, device=row.device).clamp_(1e-20, 1.0)
        out[i, pos] = torch.argmax(row - torch.log(-torch.log(u)), dim=-1)  # Gumbel-max sampling
    return out


def example_losses(
    model: nn.Module,
    batch: dict[str, Tensor],
    sample_seeds: list[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward one batch; returns (summed target-token cross-entropy [B] fp32, target tokens [B]).

    ``labels`` [B, T] are -100 at prompt and pad positions (HF shift: logits[:, :-1] predict
    labels[:, 1:]), so those positions add nothing to the loss. With ``sample_seeds`` (one int per
    example) the labels are sampled from the model (true Fisher) instead of the observed ones.
    """
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    # Only positions that predict a target need logits: skip the common prompt prefix (the LM head
    # and the cross-entropy are a large share of the cost of a small model).
    has_target = (labels[:, 1:] != -100).any(dim=0)
    start = int(has_target.float().argmax()) if bool(has_target.any()) else labels.shape[1] - 1
    keep = labels.shape[1] - start
    with torch.autocast(
        device_type=device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    ):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        try:
            logits = model(**kwargs, logits_to_keep=keep).logits
        except TypeError:  # a model class without ``logits_to_keep``: all positions, then cut
            logits = model(**kwargs).logits
        logits = logits[:, -keep:]
    logits = logits[:, :-1].float()  # positions start .. T-2
    targets = labels[:, start + 1 :]
    if sample_seeds is not None:
        with torch.no_grad():
            targets = _sampled_labels(logits.detach(), targets, sample_seeds)
    token_loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    mask = targets != -100
    # where() rather than a product: a non-finite logit at a masked position must not leak in.
    loss_sum = torch.where(mask, token_loss, torch.zeros_like(token_loss)).sum(dim=1)
    return loss_sum, mask.sum(dim=1)
