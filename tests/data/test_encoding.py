"""Prompt template, prompt masking, BOS handling, truncation and length batching."""

from __future__ import annotations

from pathlib import Path

import torch

from gdig_core.config import load_config
from gdig_core.data.encoding import (
    IGNORE_INDEX,
    build_prompt,
    collate,
    encode_pairs,
    iter_batches,
    length_batches,
)
from gdig_core.training.models import load_model

ROW = {"id": "x", "src_lang": "de", "tgt_lang": "en", "src": "Das Haus ist klein.", "tgt": "The house is small."}


def test_gdig_prompt_matches_official_template() -> None:
    cfg = load_config(None)
    assert build_prompt(cfg, "Hallo Welt", "de", "en") == (
        'Translate the following text into English\n\nText:\n"Hallo Welt"\n\n'
    )
    custom = load_config(None, ['prompt.template="{src_lang_name} -> {tgt_lang_name}: {src}\\n"'])
    assert build_prompt(custom, "Hallo", "de", "en") == "German -> English: Hallo\n"


def test_mask_covers_exactly_bos_and_prompt(tiny_model_dir: Path) -> None:
    cfg = load_config(None)
    _, tok = load_model(cfg.model, tiny_model_dir, device="cpu")
    (enc,) = encode_pairs(tok, [ROW], cfg)
    assert enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids[-1] == tok.eos_token_id
    assert all(x == IGNORE_INDEX for x in enc.labels[: enc.prompt_len])
    assert enc.labels[enc.prompt_len :] == enc.input_ids[enc.prompt_len :]
    assert tok.decode(enc.input_ids[1 : enc.prompt_len]) == build_prompt(cfg, ROW["src"], "de", "en")
    assert tok.decode(enc.input_ids[enc.prompt_len : -1]) == ROW["tgt"]
    no_bos = load_config(None, ["model.add_bos=false"])
    (enc2,) = encode_pairs(tok, [ROW], no_bos)
    assert enc2.input_ids == enc.input_ids[1:]


def test_truncation_policy_is_counted_and_keeps_target(tiny_model_dir: Path) -> None:
    _, tok = load_model(load_config(None).model, tiny_model_dir, device="cpu")
    long_row = dict(ROW, src=" ".join(["Wort"] * 200))
    for side in ("left", "right"):
        cfg = load_config(None, ["prompt.max_length=40", f"prompt.truncation_side={side}"])
        (enc,) = encode_pairs(tok, [long_row], cfg)
        assert enc.truncated and len(enc.input_ids) <= 40
        assert enc.input_ids[0] == tok.bos_token_id
        assert tok.decode(enc.input_ids[enc.prompt_len : -1]) == ROW["tgt"]  # the target survives whole
        prompt_text = tok.decode(enc.input_ids[1 : enc.prompt_len])
        assert prompt_text.startswith("Translate") == (side == "right")
    (short,) = encode_pairs(tok, [ROW], load_config(None))
    assert not short.truncated


def test_collate_pads_right_and_masks_padding(tiny_model_dir: Path) -> None:
    cfg = load_config(None)
    _, tok = load_model(cfg.model, tiny_model_dir, device="cpu")
    rows = [ROW, dict(ROW, id="y", src="Ja.", tgt="Yes.")]
    enc = encode_pairs(tok, rows, cfg)
    batch = collate(enc, tok.pad_token_id)
    short = min(range(2), key=lambda i: len(enc[i].input_ids))
    n = len(enc[short].input_ids)
    assert batch["attention_mask"][short, n:].sum() == 0
    assert torch.all(batch["labels"][short, n:] == IGNORE_INDEX)
    assert torch.all(batch["input_ids"][short, n:] == tok.pad_token_id)


def test_length_batches_group_similar_lengths_and_shuffle_reproducibly(tiny_model_dir: Path) -> None:
    cfg = load_config(None)
    _, tok = load_model(cfg.model, tiny_model_dir, device="cpu")
    rows = [dict(ROW, id=str(i), src="Wort " * (i % 7 + 1)) for i in range(20)]
    enc = encode_pairs(tok, rows, cfg)
    batches = length_batches(enc, 4)
    lengths = [max(len(enc[i].input_ids) for i in b) for b in batches]
    assert lengths == sorted(lengths)
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert length_batches(enc, 4, seed=3) == length_batches(enc, 4, seed=3) != batches
    ids = [i for batch_ids, _ in iter_batches(enc, 4, tok.pad_token_id) for i in batch_ids]
    assert sorted(ids) == sorted(r["id"] for r in rows)
