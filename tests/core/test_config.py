"""Typed config: defaults, YAML files, dotted overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.core.config import Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    c = load_config()
    assert c == Config()
    assert c.seed == 42 and c.retrieval.epochs >= 1 and c.index.kind == "auto"
    assert load_config(overrides={}) == c


def test_yaml_loading_keeps_unset_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 7\nretrieval:\n  dim: 32\n  lr: 1e-3\nranking:\n  hidden: [64, 32]\n")
    c = load_config(path)
    assert c.seed == 7 and c.retrieval.dim == 32 and c.retrieval.lr == pytest.approx(1e-3)
    assert c.ranking.hidden == [64, 32]
    assert c.retrieval.epochs == Config().retrieval.epochs  # untouched default
    assert load_config(write(tmp_path, "")) == Config()  # an empty file is the defaults


def test_dump_round_trips() -> None:
    c = load_config(overrides=["retrieval.dim=16"])
    assert Config.model_validate(dump_config(c)) == c


def test_unknown_key_error_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "retrieval:\n  epoch: 5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: retrieval\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"c\.yaml: retrievl: unknown key \(did you mean 'retrieval'\?\)"):
        load_config(write(tmp_path, "retrievl:\n  dim: 5\n"))


def test_wrong_type_error_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: retrieval\.epochs: Input should be a valid integer"):
        load_config(write(tmp_path, "retrieval:\n  epochs: many\n"))
    with pytest.raises(ConfigError, match=r"index\.kind: Input should be 'auto', 'flat', 'hnsw', 'ivf' or 'ivfpq'"):
        load_config(write(tmp_path, "index:\n  kind: annoy\n"))
    with pytest.raises(ConfigError, match=r"retrieval\.dropout: Input should be less than 1"):
        load_config(write(tmp_path, "retrieval:\n  dropout: 1.5\n"))


def test_several_errors_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "seed: x\nranking:\n  epochs: -1\n"))
    assert "seed:" in str(e.value) and "ranking.epochs:" in str(e.value)


def test_dotted_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "retrieval:\n  dim: 32\n")
    c = load_config(path, ["retrieval.dim=8", "ranking.enabled=false", "ranking.hidden=[16]", "seed=3", "trainer.devices=auto"])
    assert c.retrieval.dim == 8 and c.ranking.enabled is False and c.ranking.hidden == [16]
    assert c.seed == 3 and c.trainer.devices == "auto"
    c = load_config(overrides={"retrieval.min_rating": 3.5})
    assert c.retrieval.min_rating == 3.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("retrieval.epoch=5", r"override retrieval\.epoch: unknown key \(did you mean 'epochs'\?\)"),
        ("retrieval.epochs=abc", r"override retrieval\.epochs: Input should be a valid integer"),
        ("seed.x=1", r"override seed: Input should be a valid integer"),
        ("retrieval", r"override 'retrieval' must look like section\.key=value"),
        ("retrieval..dim=3", r"override 'retrieval\.\.dim': empty key name"),
        ("nosuch.key=1", r"override nosuch: unknown key"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "retrieval: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_shipped_configs_validate() -> None:
    shipped = sorted((REPO / "configs").glob("*.yaml"))
    if not shipped:
        pytest.skip("no configs/*.yaml in this checkout yet")
    for path in shipped:
        assert isinstance(load_config(path), Config), path


def _leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


def test_default_yaml_is_generated_from_the_typed_config() -> None:
    """configs/default.yaml is `movierec config show` of the defaults: every key, comments kept.
    Regenerate it with `movierec config show > configs/default.yaml` after changing config.py."""
    import yaml

    from movierec.core.config import render_yaml

    text = (REPO / "configs" / "default.yaml").read_text()
    assert text == render_yaml(), "configs/default.yaml is stale: run movierec config show > configs/default.yaml"
    assert load_config(REPO / "configs" / "default.yaml") == Config()
    assert _leaf_keys(yaml.safe_load(text)) == _leaf_keys(dump_config(Config()))
    assert "# two-tower vector size" in text  # field descriptions travel as comments


def test_config_show_prints_the_resolved_config(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from movierec.cli import app

    base = write(tmp_path, "retrieval:\n  epochs: 7\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(base), "--set", "ranking.hidden=[32]"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    expected = load_config(base, ["ranking.hidden=[32]"])
    assert Config.model_validate(shown) == expected and shown["retrieval"]["epochs"] == 7
    assert _leaf_keys(shown) == _leaf_keys(dump_config(Config()))
    as_json = CliRunner().invoke(app, ["config", "show", "--json"])
    import json

    assert json.loads(as_json.output) == dump_config(Config())
