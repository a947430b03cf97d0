"""The README says what the code does: its interface table, options and keys follow the code.

The interface XML is the contract (tests/test_interface_xml.py holds the live broker to it);
here the README's reference is held to the XML, and its tables to the CLI and the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import xml.etree.ElementTree as ET

import pytest
from support import REPO_ROOT

from pnpbroker.commands import build_parser
from pnpbroker.config import Config

README = (REPO_ROOT / "README.md").read_text()
CONTRACT = ET.parse(REPO_ROOT / "dbus" / "org.pnp.Broker1.xml").getroot().find("interface")


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def members(kind: str) -> list[ET.Element]:
    assert CONTRACT is not None
    return CONTRACT.findall(kind)


INTERFACE = section("The D-Bus interface")


@pytest.mark.parametrize("signal", members("signal"), ids=lambda e: e.get("name"))
def test_readme_documents_each_signal_with_its_arguments(signal: ET.Element) -> None:
    args = ", ".join(f"{a.get('type')} {a.get('name')}" for a in signal.findall("arg"))
    assert f"signal `{signal.get('name')}` | `{args}`" in INTERFACE


def rendered(method: ET.Element) -> str:
    """A method's row signature as the README writes it: `(t after, u limit) -> a(...)`."""
    ins = ", ".join(
        f"{a.get('type')} {a.get('name')}" for a in method.findall("arg[@direction='in']")
    )
    outs = method.findall("arg[@direction='out']")
    if not outs:
        return f"`({ins})`"
    if len(outs) == 1:
        return f"`({ins}) -> {outs[0].get('type')}`"
    named = ", ".join(f"{a.get('type')} {a.get('name')}" for a in outs)
    return f"`({ins}) -> ({named})`"


@pytest.mark.parametrize("method", members("method"), ids=lambda e: e.get("name"))
def test_readme_documents_each_method_with_its_arguments(method: ET.Element) -> None:
    name = f"`{method.get('name')}`"
    row = next((line for line in INTERFACE.splitlines() if name in line), "")
    assert row, f"{name} is not in the README's interface table"
    assert rendered(method) in row


@pytest.mark.parametrize("prop", members("property"), ids=lambda e: e.get("name"))
def test_readme_documents_each_property_with_its_type(prop: ET.Element) -> None:
    assert f"property `{prop.get('name')}` | `{prop.get('type')}`" in INTERFACE


def test_readme_documents_every_config_key() -> None:
    running = section("Running it")
    for field in dataclasses.fields(Config):
        assert f"`{field.name}`" in running, field.name


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices)


def test_readme_documents_every_run_option() -> None:
    running = section("Running it")
    for action in commands()["run"]._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if longs:
            assert any(f"`{o}" in running for o in longs), longs


def test_readme_names_every_command() -> None:
    for name in commands():
        assert f"pnpbroker {name}" in README, name
