"""Configuration: defaults that work, validation that names the problem."""

import pydantic
import pytest

from punchpipe_assets.config import load_config


def test_defaults_live_under_one_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PUNCHPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PUNCHPIPE_CONFIG", raising=False)
    monkeypatch.delenv("PUNCHPIPE_CATALOG_URL", raising=False)
    config = load_config()
    home = tmp_path / "home"
    assert config.landing_dir == home / "landing" and config.archive_dir == home / "archive"
    assert config.quarantine_dir == home / "quarantine" and config.dagster_home == home / "dagster"
    assert config.catalog_url == f"sqlite:///{home / 'catalog.sqlite'}"


def test_yaml_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "punchpipe.yaml"
    path.write_text(f"home: {tmp_path}\nlevel0:\n  replay_wait_hours: 6\n")
    monkeypatch.setenv("PUNCHPIPE_CATALOG_URL", "postgresql+psycopg2://pipeline@127.0.0.1/catalog")
    config = load_config(path)
    assert config.level0.replay_wait_hours == 6
    assert config.catalog_url.startswith("postgresql+psycopg2://")


@pytest.mark.parametrize(
    ("text", "field"),
    [("level0:\n  replay_wait_hours: -1\n", "replay_wait_hours"), ("sensor:\n  settle: 3\n", "settle")],
)
def test_invalid_configuration_names_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(pydantic.ValidationError, match=field):
        load_config(path)


def test_pool_limits_reach_the_instance_and_heavy_steps_use_them(config, instance):
    """Memory-heavy steps are in pools whose limits the configuration sets on the instance."""
    from punchpipe_assets.cli import apply_pool_limits
    from punchpipe_assets.definitions import build_definitions

    defaults = {"punchbowl": config.pools.punchbowl, "punchbowl_large_memory": config.pools.punchbowl_large_memory}
    assert apply_pool_limits(instance, config) == defaults
    config.pools.punchbowl, config.pools.punchbowl_large_memory = 5, 2  # neither is a default
    assert apply_pool_limits(instance, config) == {"punchbowl": 5, "punchbowl_large_memory": 2}
    assert instance.event_log_storage.get_concurrency_info("punchbowl_large_memory").slot_count == 2
    assert instance.event_log_storage.get_concurrency_info("punchbowl").slot_count == 5
    graph = build_definitions(config).resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.materializable_asset_keys}
    assert pools["level0_wfi1"] == {"punchbowl"} and pools["level1_early_nfi4"] == {"punchbowl"}
    assert pools["level1_nfi_stray_light_nfi4"] == {"punchbowl"}  # 1.8 GB at flight size, measured
    assert pools["level1_late_wfi1"] == pools["level1_stray_light_wfi3"] == {"punchbowl_large_memory"}
