"""The docs say what the code does: each fact is written once and the copies are held to it.

The interface XML is the contract (tests/test_interface_xml.py holds the live broker to it);
here docs/dbus.md's tables are held to the XML and to the wire module, docs/reference.md's
options to the CLI and the config, its process contract to pnpbroker/contract.py, and every
relative link in the docs to a file that exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support import REPO_ROOT

from pnpbroker.bus.wire import OUTCOME_SIGNATURES
from pnpbroker.commands import build_parser
from pnpbroker.config import Config
from pnpbroker.contract import MEANINGS, RELOAD_SIGNALS, STOP_SIGNALS, ExitCode, exit_codes_text

README = (REPO_ROOT / "README.md").read_text()
DOCS = REPO_ROOT / "docs"
XML = (REPO_ROOT / "dbus" / "org.pnp.Broker1.xml").read_text()
CONTRACT = ET.parse(REPO_ROOT / "dbus" / "org.pnp.Broker1.xml").getroot().find("interface")


def section(path: Path, title: str) -> str:
    text = path.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def members(kind: str) -> list[ET.Element]:
    assert CONTRACT is not None
    return CONTRACT.findall(kind)


INTERFACE = section(DOCS / "dbus.md", "The interface")
RUNNING = section(DOCS / "reference.md", "Options and configuration")
PROCESS = section(DOCS / "reference.md", "Process contract")


@pytest.mark.parametrize("signal", members("signal"), ids=lambda e: e.get("name"))
def test_docs_document_each_signal_with_its_arguments(signal: ET.Element) -> None:
    args = ", ".join(f"{a.get('type')} {a.get('name')}" for a in signal.findall("arg"))
    assert f"signal `{signal.get('name')}` | `{args}`" in INTERFACE


def rendered(method: ET.Element) -> str:
    """A method's row signature as the docs write it: `(t after, u limit) -> a(...)`."""
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
def test_docs_document_each_method_with_its_arguments(method: ET.Element) -> None:
    name = f"`{method.get('name')}`"
    row = next((line for line in INTERFACE.splitlines() if name in line), "")
    assert row, f"{name} is not in docs/dbus.md's interface table"
    assert rendered(method) in row


@pytest.mark.parametrize("prop", members("property"), ids=lambda e: e.get("name"))
def test_docs_document_each_property_with_its_type(prop: ET.Element) -> None:
    assert f"property `{prop.get('name')}` | `{prop.get('type')}`" in INTERFACE


def test_the_interface_table_has_no_member_the_contract_lacks() -> None:
    known = {e.get("name") for kind in ("signal", "method", "property") for e in members(kind)}
    table = INTERFACE[: INTERFACE.index("### The outcome")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) >= len(known) - 1  # Pause and Resume share a row
    for row in rows:
        named = set(re.findall(r"`(\w+)`", row.split("|")[1]))
        assert named, row
        assert named <= known, row


def test_the_outcome_table_and_the_contract_give_every_key_its_signature() -> None:
    table = INTERFACE[INTERFACE.index("### The outcome") :]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.MULTILINE)
    assert dict(rows) == dict(OUTCOME_SIGNATURES)
    assert len(rows) == len(OUTCOME_SIGNATURES)
    start = XML.index("handler: how the legacy program ended")
    comment = XML[start : XML.index("-->", start)]
    for key, signature in OUTCOME_SIGNATURES.items():
        assert re.search(rf"\b{key} \({re.escape(signature)}[):,]", comment), key


def test_docs_document_every_config_key() -> None:
    for field in dataclasses.fields(Config):
        assert f"`{field.name}`" in RUNNING, field.name


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(found[0].choices)


def test_docs_document_every_run_option() -> None:
    for action in commands()["run"]._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if longs:
            assert any(f"`{o}" in RUNNING for o in longs), longs


def test_readme_names_every_command() -> None:
    for name in commands():
        assert f"pnpbroker {name}" in README, name


def test_the_process_contract_is_the_code_s() -> None:
    for code in ExitCode:
        assert f"| exit {int(code)} | {MEANINGS[code]} |" in PROCESS, code
    rows = re.findall(r"^\| exit (\d+) \|", PROCESS, re.MULTILINE)
    assert [int(r) for r in rows] == [int(code) for code in ExitCode]
    stop = ", ".join(sig.name for sig in STOP_SIGNALS)
    assert f"| {stop} | finish the running program" in PROCESS
    for sig in RELOAD_SIGNALS:
        assert f"| {sig.name} | re-read the configuration" in PROCESS
    assert build_parser().epilog == exit_codes_text()
    developers = section(REPO_ROOT / "DEVELOPERS.md", "Process contract")
    assert [int(n) for n in re.findall(r"\b(\d+) [a-z]", developers)] == [int(c) for c in ExitCode]


LINK = re.compile(r"\]\(([^)#:]+)(#[^)]*)?\)")


@pytest.mark.parametrize(
    "doc", [REPO_ROOT / "README.md", REPO_ROOT / "DEVELOPERS.md", *sorted(DOCS.glob("*.md"))]
)
def test_relative_links_lead_to_files_that_exist(doc: Path) -> None:
    for target, _ in LINK.findall(doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def test_the_fault_table_names_tests_that_exist() -> None:
    """docs/faults.md names, for each fault, the test that shows it: those tests must exist."""
    text = (DOCS / "faults.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text)
    assert len(named) >= 10
    for path, test in named:
        source = (REPO_ROOT / path).read_text()
        assert not test or f"def {test}(" in source, f"{path}::{test}"
