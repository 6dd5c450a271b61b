"""Settings: validation names the variable, the environment round trip, flags share the rule."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

import pytest

from runtime import config
from runtime._daemon import SettingFlag
from runtime.cluster.local import LocalCluster
from runtime.exceptions import ConfigError, UnknownSettingError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``CELLRAY_*`` setting from the caller's environment leaks into a test."""
    for name in config.FIELD_NAMES:
        monkeypatch.delenv(config.env_name(name), raising=False)
    return monkeypatch


def test_the_defaults_are_valid(clean_env: pytest.MonkeyPatch) -> None:
    assert config.load() == config.Settings()
    assert config.Settings().validate() == config.Settings()


@pytest.mark.parametrize(("name", "bad", "expected"), [
    ("heartbeat_ms", 5, "must be an integer >= 10, got 5"),
    ("gcs_shards", 0, "must be an integer >= 1, got 0"),
    ("pipeline_depth", 1.5, "must be an integer, got 1.5"),
    ("stop_grace_s", 0.0, "must be a number > 0, got 0.0"),
    ("bandwidth", -1.0, "must be a number > 0, got -1.0"),
    ("store_memory_fraction", 1.5, "must be a number in (0, 1], got 1.5"),
    ("store_shm_fraction", 0.0, "must be a number in (0, 1], got 0.0"),
    ("idle_worker_s", True, "must be a number, got True"),
    ("host", 1, "must be a string, got 1"),
])
def test_a_bad_value_names_the_setting_and_its_variable(name: str, bad: object, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        dataclasses.replace(config.Settings(), **{name: bad}).validate()
    assert str(info.value) == f"setting {name} (env CELLRAY_{name.upper()}) {expected}"


def test_a_bad_environment_variable_is_named(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELLRAY_HEARTBEAT_MS", "fast")
    with pytest.raises(ValueError, match=r"CELLRAY_HEARTBEAT_MS='fast' is not a valid int"):
        config.load()
    clean_env.setenv("CELLRAY_HEARTBEAT_MS", "1")
    with pytest.raises(ValueError, match=r"\(env CELLRAY_HEARTBEAT_MS\) must be an integer >= 10"):
        config.load()


def test_to_env_and_load_round_trip(clean_env: pytest.MonkeyPatch) -> None:
    settings = config.Settings(heartbeat_ms=123, task_time_s=0.025, bandwidth=2.5e8, host="0.0.0.0",
                               store_memory_fraction=0.125, spill_threshold=7, stop_grace_s=0.3)
    env = settings.to_env()
    assert set(env) == {f"CELLRAY_{name.upper()}" for name in config.FIELD_NAMES}
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert config.load() == settings


def test_load_overrides_the_environment_and_skips_none(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELLRAY_GCS_SHARDS", "8")
    assert config.load().gcs_shards == 8
    assert config.load(gcs_shards=2).gcs_shards == 2
    assert config.load(gcs_shards=None).gcs_shards == 8
    with pytest.raises(ValueError, match="gcs_shards"):
        config.load(gcs_shards=0)


def test_an_unknown_override_is_rejected_with_the_list_of_settings(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match=r"unknown setting\(s\) heartbeat; the settings are heartbeat_ms, "):
        config.load(heartbeat=5)
    with pytest.raises(TypeError, match="unknown setting"):
        config.Settings().override(no_such_thing=1)
    assert config.Settings().override(max_spills=5, pipeline_depth=None).max_spills == 5


def test_every_field_has_a_documented_kind_and_a_rule() -> None:
    for name in config.FIELD_NAMES:
        assert config.kind_of(name) in (int, float, str)
        assert config.requirement(name, getattr(config.Settings(), name)) is None
    with pytest.raises(TypeError, match="unknown setting 'nope'"):
        config.kind_of("nope")


def test_a_setting_flag_uses_the_rule_of_its_setting() -> None:
    shards = SettingFlag("--num-shards", "gcs_shards")
    assert shards.convert("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be an integer >= 1, got 0$"):
        shards.convert("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be an integer, got 'x'$"):
        shards.convert("x")
    task_time = SettingFlag("--task-time-ms", "task_time_s", scale=0.001)
    assert task_time.convert("25") == pytest.approx(0.025)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a number > 0, got -1$"):
        task_time.convert("-1")


def test_a_local_cluster_hands_every_setting_to_its_children(tmp_path: pathlib.Path) -> None:
    settings = config.Settings(heartbeat_ms=250, pipeline_depth=2, idle_worker_s=3.5)
    cluster = LocalCluster([], settings=settings, session_root=tmp_path, env={"KEEP": "1"})
    env = cluster._env()
    assert env["KEEP"] == "1"
    assert {k: v for k, v in env.items() if k.startswith("CELLRAY_")} == settings.to_env()
    assert (env["CELLRAY_HEARTBEAT_MS"], env["CELLRAY_PIPELINE_DEPTH"], env["CELLRAY_IDLE_WORKER_S"]) == (
        "250", "2", "3.5")


def test_settings_validate_themselves_whenever_they_are_built() -> None:
    with pytest.raises(ConfigError, match=r"^setting heartbeat_ms \(env CELLRAY_HEARTBEAT_MS\) "
                                                 r"must be an integer >= 10, got 5$"):
        config.Settings(heartbeat_ms=5)
    with pytest.raises(ValueError, match="pipeline_depth"):
        dataclasses.replace(config.Settings(), pipeline_depth=0)
    with pytest.raises(ValueError, match="max_spills"):
        config.Settings().override(max_spills=-1)


def test_a_node_timeout_must_exceed_the_heartbeat_interval() -> None:
    with pytest.raises(ConfigError) as info:
        config.Settings(heartbeat_ms=1000, node_timeout_ms=1000)
    assert str(info.value) == (
        "setting node_timeout_ms (env CELLRAY_NODE_TIMEOUT_MS) must be more than heartbeat_ms "
        "(1000) (a live node would be declared dead between two heartbeats), got 1000; raise "
        "CELLRAY_NODE_TIMEOUT_MS or lower CELLRAY_HEARTBEAT_MS")
    assert info.value.setting == "node_timeout_ms"
    assert config.Settings(heartbeat_ms=1000, node_timeout_ms=1001).node_timeout_ms == 1001


def test_config_errors_keep_the_builtin_bases(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELLRAY_GCS_SHARDS", "many")
    with pytest.raises(ConfigError) as bad:
        config.load()
    assert isinstance(bad.value, ValueError)
    clean_env.delenv("CELLRAY_GCS_SHARDS")
    with pytest.raises(UnknownSettingError) as unknown:
        config.load(shards=2)
    assert isinstance(unknown.value, TypeError) and isinstance(unknown.value, ConfigError)
