"""Teacher-forced NLL of target tokens given the prompt, one forward pass per row and no backward:
the loop shared by the evaluation's reference NLL and the QE score's two directions.

Rows are pairs (``id, src_lang, tgt_lang, src, tgt``) encoded with the training prompt
(gdig_core.data.encoding), so the NLL is exactly the training loss of the pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gdig_core.config import GdigConfig

#: Bytes of float32 logits one teacher-forced batch may hold. The logits are [rows, tokens, vocab]
#: and the cross-entropy keeps a second copy: Gemma's 262k vocabulary at 64 rows of ~100 tokens
#: took 17 GiB and was killed for memory on a 24 GiB machine.
NLL_LOGITS_BYTES = 1 << 30


def nll_batch_size(model: Any, encoded: Sequence[Any], cap: int) -> int:
    """Rows per teacher-forced batch: at most ``cap``, and few enough that the batch's logits
    stay under ``NLL_LOGITS_BYTES`` at the longest example's length."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    longest = max((len(e.input_ids) for e in encoded), default=1)
    return max(1, min(cap, NLL_LOGITS_BYTES // (4 * vocab * longest)))


def target_nll(
    model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], cfg: GdigConfig, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(summed target-token NLL [N] float64, target tokens [N] int64), in the order of ``rows``."""
    import torch

    from gdig_core.data.encoding import encode_pairs, iter_batches
    from gdig_core.training.losses import example_losses

    encoded = encode_pairs(tokenizer, rows, cfg)
    position = {e.id: i for i, e in enumerate(encoded)}
    if len(position) != len(encoded):
        raise ValueError("target_nll: row ids must be unique")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss = np.zeros(len(encoded), dtype=np.float64)
    tokens = np.zeros(len(encoded), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids, batch in iter_batches(encoded, nll_batch_size(model, encoded, batch_size), pad_id):
                loss_sum, n_tok = example_losses(model, batch)
                at = [position[i] for i in ids]
                loss[at] = loss_sum.double().cpu().numpy()
                tokens[at] = n_tok.cpu().numpy()
    finally:
        model.train(was_training)
    return loss, tokens
