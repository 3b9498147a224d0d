"""Config loading: presets by name (dots included), overrides, strict keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from privmed.config import PRESET_DIR, load_config, resolve_path
from privmed.errors import ConfigError


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_every_preset_loads_by_name(name: str) -> None:
    assert resolve_path(name) == PRESET_DIR / f"{name}.toml"
    assert resolve_path(f"{name}.toml") == PRESET_DIR / f"{name}.toml"
    cfg = load_config(name)
    assert cfg.source.endswith(f"{name}.toml")


def test_dotted_preset_name_is_not_cut_at_the_dot() -> None:
    cfg = load_config("pneumonia-10c-a0.5")
    assert cfg.data.partition_options["alpha"] == 0.5
    assert cfg.data.num_clients == 10


def test_overrides_are_toml_values() -> None:
    cfg = load_config(
        "smoke", overrides=["train.epochs=7", "train.lr=1", "model.name=dpresnet", "data.options={classes = 3}"]
    )
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.name == "dpresnet"
    assert cfg.data.options == {"classes": 3}


def test_a_file_path_wins_over_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "smoke.toml"
    path.write_text("[train]\nepochs = 11\n")
    assert load_config(str(path)).train.epochs == 11


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("[trian]\nepochs = 1\n", [], "unknown config table [trian]"),
        ("[train]\nepoch = 1\n", [], "unknown key 'epoch'"),
        ("[train]\nepochs = 'three'\n", [], "wrong type"),
        ("[train]\nepochs = 1.5\n", [], "wrong type"),
        ("[train\nepochs = 1\n", [], "not valid TOML"),
        ("", ["epochs=3"], "section.key=value"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, overrides: list[str], needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), overrides=overrides)
    assert needle in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("no-such-preset")
    assert "smoke" in str(info.value) and "preset" in str(info.value)
