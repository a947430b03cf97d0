"""Configuration: TOML keys, overrides, sizes; every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pnpbroker import config
from pnpbroker.config import Config
from pnpbroker.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pnpbroker.toml"
    path.write_text(text)
    return path


def test_file_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'hotplug_program = "/bin/true"\ntimeout = 3\nkill_grace = 0.5\n'
        'state_dir = "/tmp/x"\nreceive_buffer = "64M"\nretention_events = "2K"\n'
        'retention_days = 1.5\nlog_level = "debug"\nbus_address = "unix:path=/tmp/b"\n',
    )
    cfg = config.load(path)
    assert cfg == Config(
        hotplug_program="/bin/true",
        timeout=3.0,
        kill_grace=0.5,
        state_dir=Path("/tmp/x"),
        receive_buffer=64 << 20,
        retention_events=2048,
        retention_days=1.5,
        log_level="debug",
        bus_address="unix:path=/tmp/b",
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("64M", 64 << 20), ("1g", 1 << 30), ("512K", 512 << 10), (4096, 4096)],
)
def test_sizes(tmp_path: Path, text: str | int, size: int) -> None:
    assert config.from_mapping({"receive_buffer": text}).receive_buffer == size


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'hotplug_program = "/bin/true"\ntimeout = 3\n')
    cfg = config.load(path, {"hotplug_program": "", "receive_buffer": "1M"})
    assert (cfg.hotplug_program, cfg.timeout, cfg.receive_buffer) == ("", 3.0, 1 << 20)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("hotplug_progam = '/bin/true'", "hotplug_progam"),
        ("timeout = 'soon'", "timeout"),
        ("timeout = 0", "timeout"),
        ("timeout = true", "timeout"),
        ("kill_grace = -1", "kill_grace"),
        ("receive_buffer = '64Q'", "receive_buffer"),
        ("receive_buffer = 'M'", "receive_buffer"),
        ("receive_buffer = 0", "receive_buffer"),
        ("receive_buffer = 1.5", "receive_buffer"),
        ("retention_events = -3", "retention_events"),
        ("retention_days = 'week'", "retention_days"),
        ("log_level = 'loud'", "log_level"),
        ("state_dir = 3", "state_dir"),
        ("hotplug_program = ['/bin/true']", "hotplug_program"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(_write(tmp_path, text + "\n"))
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_override_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(None, {"timeout": -2.0})
    assert caught.value.key == "timeout"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "timeout = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        config.load(path)
    assert caught.value.key == str(path)


def test_default_program_follows_sbin_hotplug(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config, "LEGACY_PROGRAM", tmp_path / "hotplug")
    assert Config().hotplug_program == ""
    (tmp_path / "hotplug").write_text("#!/bin/sh\n")
    assert Config().hotplug_program == ""
    (tmp_path / "hotplug").chmod(0o755)
    assert Config().hotplug_program == str(tmp_path / "hotplug")
