from pathlib import Path

import pytest

from gdig_core.config import ConfigError, GdigConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, GdigConfig)
    assert cfg.selection.budgets


def test_override_sets_nested_values_and_keeps_section_defaults() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["selection.budgets=[10, 20]", "data.pool.sample=50"])
    assert cfg.selection.budgets == [10, 20]
    assert cfg.data.pool.sample == 50
    assert cfg.data.pool.path == "de-en/pool.wmt17-20.jsonl"  # untouched sibling key survives


def test_partial_section_in_yaml_keeps_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("curvature:\n  method: kfac\n")
    cfg = load_config(path)
    assert cfg.curvature.method == "kfac"
    assert cfg.curvature.damping_factor == GdigConfig().curvature.damping_factor


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "expected"),
    [
        ("curvature:\n  method: magic\n", [], "curvature.method"),
        ("selection:\n  budgets: [0]\n", [], "selection.budgets"),
        ("selection:\n  tau: 1.5\n", [], "selection.tau"),
        ("scoring:\n  featur_dim: 10\n", [], "scoring.featur_dim"),
        ("", ["reference.train.learning_rate=-1"], "reference.train.learning_rate"),
        ("prompt:\n  template: 'no source here'\n", [], "prompt.template"),
        ("data:\n  pool: {path: x.txt, format: parallel}\n", [], "data.pool"),
    ],
)
def test_invalid_config_names_key_path(tmp_path: Path, yaml_text: str, overrides: list[str], expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_bad_yaml_and_bad_override_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["selection.tau"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_unknown_language_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prompt.language_names"):
        GdigConfig().language_name("xx")
