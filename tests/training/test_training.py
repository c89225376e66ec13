"""Finetuning: memorisation of real pairs, exact resume, LoRA merge, schedule, checkpoint hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from paths import DATA_DIR
from safetensors.torch import load_file

from gdig_core.config import GdigConfig, LoraConfig, TinyModelConfig, TrainConfig
from gdig_core.training.finetune import checkpoint_root, finetune, lr_lambda

POOL = DATA_DIR / "de-en/pool.wmt17-20.jsonl"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(max_length: int = 128) -> GdigConfig:
    cfg = GdigConfig()
    cfg.data.data_dir = str(DATA_DIR)
    cfg.model.device = "cpu"
    cfg.prompt.max_length = max_length
    return cfg


def _pool_rows(n: int, max_chars: int | None = None, skip: int = 0) -> list[dict]:
    rows = []
    with open(POOL, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if max_chars is None or (len(row["src"]) <= max_chars and len(row["tgt"]) <= max_chars):
                rows.append(row)
            if len(rows) >= n + skip:
                break
    return rows[skip:]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


class Interrupt(RuntimeError):
    pass


def _interrupt_at(step: int):
    def on_step(s: int, loss: float) -> None:
        if s == step:
            raise Interrupt(f"injected failure after step {s}")

    return on_step


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path, lora: bool) -> None:
    cfg = _cfg(max_length=96)
    table = pa.Table.from_pylist(_pool_rows(24, max_chars=150))
    train = TrainConfig(
        max_steps=9, learning_rate=3e-3, batch_size=4, grad_accum=2, warmup_ratio=0.2, weight_decay=0.01,
        save_every=2, keep_checkpoints=2, seed=3,
        lora=LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "up_proj"]) if lora else None,
    )
    straight = finetune(cfg, train, table, tmp_path / "straight", base_model=tiny_model_dir, progress=False)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False, on_step=_interrupt_at(5))
    assert not out.exists(), "an interrupted run must not leave an output directory"
    ckpts = sorted(p.name for p in checkpoint_root(out).iterdir() if p.name.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-00000002", "checkpoint-00000004"]  # keep_checkpoints=2
    resumed = finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False)

    summary = json.loads((resumed / "training_summary.json").read_text())
    straight_summary = json.loads((straight / "training_summary.json").read_text())
    assert summary["resumed_from_step"] == 4
    assert summary["steps"] == 9 and summary["examples_seen"] == straight_summary["examples_seen"]
    assert summary["losses"] == pytest.approx(straight_summary["losses"], rel=1e-5, abs=1e-6)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not checkpoint_root(out).exists(), "checkpoints are removed after success"
    # The same call again finds the finished result and does not train again.
    stamp = (resumed / "model.safetensors").stat().st_mtime_ns
    assert finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False,
                    on_step=_interrupt_at(1)) == out
    assert (resumed / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dirs left behind"

    base = _weights(tiny_model_dir)
    if lora:
        # The adapter is merged: a plain checkpoint, no peft files, only targeted weights changed.
        assert not (resumed / "adapter_config.json").exists()
        assert a.keys() == base.keys()
        changed = {n for n in a if not torch.equal(a[n], base[n])}
        assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight")) for n in changed)
    else:
        assert any(not torch.equal(a[n], base[n]) for n in a)


def test_final_checkpoint_loads_with_transformers(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _cfg(max_length=96)
    table = pa.Table.from_pylist(_pool_rows(8, max_chars=150))
    train = TrainConfig(max_steps=2, learning_rate=1e-3, batch_size=4,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]))
    out = finetune(cfg, train, table, tmp_path / "m", base_model=tiny_model_dir, progress=False)
    summary = json.loads((out / "training_summary.json").read_text())
    for key in ("steps", "final_loss", "examples_per_s", "train_seconds", "tokens_per_s"):
        assert summary[key] is not None, key
    assert summary["steps"] == 2 and summary["device"] == "cpu" and summary["bf16_autocast"] is False
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token_id is not None


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_same_result(tmp_path: Path, tiny_model_dir: Path, lora: bool) -> None:
    cfg = _cfg(max_length=96)
    table = pa.Table.from_pylist(_pool_rows(8, max_chars=150))
    train = TrainConfig(max_steps=3, learning_rate=1e-3, batch_size=4,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0) if lora else None)
    plain = finetune(cfg, train, table, tmp_path / "plain", base_model=tiny_model_dir, progress=False)
    gc_cfg = train.model_copy(update={"gradient_checkpointing": True})
    ckpt = finetune(cfg, gc_cfg, table, tmp_path / "gc", base_model=tiny_model_dir, progress=False)
    a, b = _weights(plain), _weights(ckpt)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)
    assert json.loads((ckpt / "config.json").read_text()).get("use_cache", True) is True


def _interrupted_run(tmp_path: Path, tiny_model_dir: Path):
    """A 4-step run checkpointing every step, interrupted after step 2: (cfg, table, train, out)."""
    cfg = _cfg(max_length=96)
    table = pa.Table.from_pylist(_pool_rows(8, max_chars=150))
    train = TrainConfig(max_steps=4, learning_rate=1e-3, batch_size=4, save_every=1)
    out = tmp_path / "m"
    with pytest.raises(Interrupt):
        finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False, on_step=_interrupt_at(2))
    return cfg, table, train, out


def test_stale_checkpoints_of_another_run_are_not_resumed(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg, table, train, out = _interrupted_run(tmp_path, tiny_model_dir)
    other = train.model_copy(update={"learning_rate": 2e-3})
    finetune(cfg, other, table, out, base_model=tiny_model_dir, progress=False)
    assert json.loads((out / "training_summary.json").read_text())["resumed_from_step"] is None


def test_lr_schedule() -> None:
    linear = lr_lambda("linear", warmup=2, total=10)
    assert [linear(s) for s in (0, 1)] == [0.5, 1.0]
    assert linear(2) == 1.0 and linear(6) == pytest.approx(0.5) and linear(10) == 0.0
    cosine = lr_lambda("cosine", warmup=0, total=10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert lr_lambda("constant", warmup=4, total=10)(9) == 1.0


@pytest.mark.slow
def test_tiny_model_memorises_real_pairs(tmp_path: Path) -> None:
    """A few hundred steps on 50 real de-en pairs: the model reproduces their translations."""
    from gdig_core.evaluation.generation import generate_translations
    from gdig_core.evaluation.metrics import corpus_metrics
    from gdig_core.training.models import build_tiny_model, load_model

    cfg = _cfg(max_length=128)
    texts_rows = _pool_rows(2000)
    texts = [r["src"] for r in texts_rows] + [r["tgt"] for r in texts_rows]
    tiny = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, vocab_size=2000)
    base = build_tiny_model(tiny, texts, tmp_path / "base", seed=0)
    pairs = _pool_rows(50, max_chars=90)
    train = TrainConfig(max_steps=200, learning_rate=1e-2, batch_size=10, warmup_ratio=0.05)
    out = finetune(cfg, train, pa.Table.from_pylist(pairs), tmp_path / "ft", base_model=base, progress=False)

    sources, refs = [r["src"] for r in pairs], [r["tgt"] for r in pairs]
    scores = {}
    for name, path in (("untrained", base), ("trained", out)):
        model, tok = load_model(cfg.model, path=path)
        hyps = generate_translations(model, tok, sources, "de", "en", cfg, batch_size=25, max_new_tokens=40)
        scores[name] = corpus_metrics(hyps, refs, "en")["bleu"]
        if name == "trained":
            exact = sum(h == r for h, r in zip(hyps, refs, strict=True))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["final_loss"] < 0.25 * summary["first_loss"]
    assert scores["untrained"] < 5.0
    # Measured: untrained 0.0 BLEU; trained 100 BLEU with all 50 reproduced exactly.
    assert scores["trained"] > 60.0, scores
    assert exact >= 25, f"only {exact} of 50 translations reproduced exactly"


def test_cli_finetune(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from gdig_cli.train_cmds import add_parser

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _pool_rows(6, max_chars=150)))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{data_dir: {DATA_DIR}}}\nmodel: {{device: cpu}}\nprompt: {{max_length: 96}}\n"
                      "finetune: {train: {max_steps: 2, batch_size: 3, learning_rate: 1.0e-3}}\n")
    parser = argparse.ArgumentParser(prog="gdig")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["finetune", str(config), "--data", str(data), "--base-model", str(tiny_model_dir),
                              "--out", str(tmp_path / "out"), "--set", "finetune.train.max_steps=3", "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["n_pairs"] == 6
    assert "examples/s" in capsys.readouterr().out


def test_checkpoint_frequency_is_not_part_of_the_run_identity(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg, table, train, out = _interrupted_run(tmp_path, tiny_model_dir)
    other = train.model_copy(update={"save_every": 3, "keep_checkpoints": 2, "save_every_minutes": None})
    finetune(cfg, other, table, out, base_model=tiny_model_dir, progress=False)
    assert json.loads((out / "training_summary.json").read_text())["resumed_from_step"] == 2


def test_diverging_loss_stops_with_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(max_length=96)
    table = pa.Table.from_pylist(_pool_rows(4, max_chars=150))
    train = TrainConfig(max_steps=3, learning_rate=1e30, batch_size=4, max_grad_norm=None, warmup_ratio=0.0)
    with pytest.raises(FloatingPointError, match="learning_rate"):
        finetune(cfg, train, table, tmp_path / "m", base_model=tiny_model_dir, progress=False)
    assert not (tmp_path / "m").exists()


def _flip_bytes(path: Path, offset: int = -64, count: int = 16) -> None:
    """Change ``count`` bytes in place, keeping the file's size (what a bad disk or a stray write does)."""
    data = bytearray(path.read_bytes())
    start = offset % len(data)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-trainable", "truncate-optimizer"])
def test_corrupt_checkpoint_is_detected_and_the_previous_one_used(
    tmp_path: Path, tiny_model_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, table, train, out = _interrupted_run(tmp_path, tiny_model_dir)
    latest = checkpoint_root(out) / "checkpoint-00000002"
    assert (checkpoint_root(out) / "checkpoint-00000001").is_dir(), "two checkpoints are kept by default"
    if damage == "flip-trainable":
        bad = latest / "trainable.safetensors"
        _flip_bytes(bad)
    else:
        bad = latest / "optimizer.safetensors"
        bad.write_bytes(bad.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False)
    assert json.loads((out / "training_summary.json").read_text())["resumed_from_step"] == 1
    assert str(bad) in caplog.text and "checkpoint-00000002 is corrupt" in caplog.text
    straight = finetune(cfg, train, table, tmp_path / "straight", base_model=tiny_model_dir, progress=False)
    a, b = _weights(straight), _weights(out)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_every_checkpoint_corrupt_trains_from_the_start(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg, table, train, out = _interrupted_run(tmp_path, tiny_model_dir)
    for ckpt in checkpoint_root(out).iterdir():
        _flip_bytes(ckpt / "rng.safetensors", offset=-8, count=4)
    finetune(cfg, train, table, out, base_model=tiny_model_dir, progress=False)
    assert json.loads((out / "training_summary.json").read_text())["resumed_from_step"] is None
