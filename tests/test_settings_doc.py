"""docs/settings.md is generated from fda.config.Config and must match it."""
from pathlib import Path

import pytest
from pydantic import ValidationError

from fda import settings_doc
from fda.config import Config

REPO = Path(__file__).resolve().parents[1]
SETTINGS_MD = REPO / "docs" / "settings.md"
REGENERATE = ".venv/bin/python -m fda.settings_doc > docs/settings.md"
# settings whose values form a list today; the reference must keep listing them
CHOICE_SETTINGS = ("model", "dataset", "partition", "optimizer", "lr_schedule", "strategy", "monitor",
                   "theta_profile", "sketch_correction", "server_optimizer", "sync_optimizer_state",
                   "sync_compression", "device", "gpu_aware_mpi", "fail_mode")


def _row(name: str) -> str:
    field = Config.model_fields[name]
    strategies = settings_doc.allowed_values("strategy", Config.model_fields["strategy"])
    return settings_doc.setting_row(name, field, strategies, ())


def test_settings_md_is_current():
    assert SETTINGS_MD.is_file(), f"docs/settings.md is missing: generate it with `{REGENERATE}`"
    assert SETTINGS_MD.read_text() == settings_doc.render(), (
        f"docs/settings.md is stale (fda.config.Config changed): regenerate it with `{REGENERATE}`")


def test_every_setting_has_a_meaning():
    missing = [n for n, f in Config.model_fields.items() if not settings_doc.description(n, f)]
    assert not missing, (f"settings without a description: {missing}; give them Field(description=...) "
                         "or an entry in fda.settings_doc.DESCRIPTIONS")


def test_descriptions_name_only_existing_settings():
    stale = sorted(set(settings_doc.DESCRIPTIONS) - set(Config.model_fields))
    assert not stale, f"fda.settings_doc.DESCRIPTIONS describes settings Config no longer has: {stale}"


def test_every_setting_has_a_row_in_order():
    rows = [line for line in settings_doc.render().splitlines() if line.startswith("| `")]
    names = [line.split("`")[1] for line in rows]
    assert names == list(Config.model_fields)


@pytest.mark.parametrize("name", CHOICE_SETTINGS)
def test_choice_settings_list_exactly_what_config_accepts(name):
    values = settings_doc.allowed_values(name, Config.model_fields[name])
    assert values, (f"{name}: the reference no longer lists its allowed values; if Config now checks them "
                    "against a registry, name it in fda.settings_doc.REGISTRIES (or in the field's "
                    "json_schema_extra={'choices': ...})")
    for value in values:
        Config(**{name: value})
    with pytest.raises(ValidationError):
        Config(**{name: "no-such-value"})
    row = _row(name)
    assert all(f"`{settings_doc._show(v)}`" in row for v in values)


@pytest.mark.parametrize("name", list(Config.model_fields))
def test_default_cell_starts_with_the_default_of_the_default_strategy(name):
    default_cell = _row(name).split(" | ")[2]
    expected = Config().resolved(name)
    assert default_cell.startswith(f"`{settings_doc._show(expected)}`"), (name, default_cell)


def test_strategy_specific_defaults_are_listed():
    row = _row("tau")
    assert f"diloco: `{Config(strategy='diloco').resolved('tau')}`" in row
    assert "fedavg:" not in row  # same as the generic default: not repeated


def test_ranges_come_from_the_field_constraints():
    assert "(≥ 1)" in _row("batch_size")
    assert "(> 0, ≤ 1)" in _row("target_acc")
    assert "(≥ 0, < 1)" in _row("momentum")


def test_render_type_of_annotations_without_a_literal():
    assert settings_doc.render_type(int | None) == "integer or none"
    assert settings_doc.render_type(float) == "number"
    assert settings_doc.render_type(list[int]) == "list"


def test_check_mode_tells_stale_from_current(tmp_path, capsys):
    current, stale = tmp_path / "current.md", tmp_path / "stale.md"
    current.write_text(settings_doc.render())
    stale.write_text(settings_doc.render().replace("`lenet5`", "`lenet6`"))
    assert settings_doc.main(["--check", str(current)]) == 0
    assert settings_doc.main(["--check", str(stale)]) == 1
    assert "python -m fda.settings_doc >" in capsys.readouterr().err


def test_citations_become_relative_links():
    text = settings_doc.link_citations('see docs/algorithm.md, "theta=auto" and docs/log.md')
    assert text == 'see [algorithm.md, "theta=auto"](algorithm.md#thetaauto) and [log.md](log.md)'
