"""Man pages made from the command line's own parser: pnpbroker(8) and one page per command.

A small generator rather than a build dependency (argparse-manpage): the pages are written by
``pnpbroker install`` (and so by the Debian package's build) from the parser the program runs,
so ``--help`` and the pages cannot disagree. Sections as mdevd's pages have them: name,
synopsis, description, options, exit status, signals, see also. Plain roff (``man -l`` shows
it; tests/test_manpages.py renders each page).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from pnpbroker import __version__
from pnpbroker.contract import MEANINGS, RELOAD_SIGNALS, STOP_SIGNALS

SECTION = "8"
TITLE = "pnpbroker manual"


def escape(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line starting with a control dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(f"\\&{line}" if line[:1] in ".'" else line for line in text.splitlines())


def _header(name: str, summary: str) -> list[str]:
    return [
        f'.TH "{name.upper()}" "{SECTION}" "" "pnpbroker {__version__}" "{TITLE}"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
    ]


def _synopsis(parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return [".SH SYNOPSIS", escape(" ".join(usage.split()))]


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        yield ".TP"
        yield f"\\fB{escape(_invocation(action))}\\fR"
        yield escape(formatter._expand_help(action) if action.help else "")


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def _exit_status() -> list[str]:
    lines = [".SH EXIT STATUS"]
    for code, meaning in MEANINGS.items():
        lines += [".TP", f"\\fB{int(code)}\\fR", escape(meaning)]
    return lines


def _signals() -> list[str]:
    stop = ", ".join(sig.name for sig in STOP_SIGNALS)
    reload = ", ".join(sig.name for sig in RELOAD_SIGNALS)
    return [
        ".SH SIGNALS",
        ".TP",
        f"\\fB{stop}\\fR",
        "run: finish the running program, publish what is handled, exit 0; monitor: exit 0.",
        ".TP",
        f"\\fB{reload}\\fR",
        "run: re\\-read the configuration (a bad file keeps the running one).",
    ]


def _see_also(names: list[str]) -> list[str]:
    pages = [f"\\fB{escape(n)}\\fR({SECTION})" for n in names]
    pages += ["\\fBudevadm\\fR(8)", "\\fBmdevd\\fR(8)", "\\fBpolkit\\fR(8)"]
    return [".SH SEE ALSO", ", ".join(pages)]


def command_page(name: str, parser: argparse.ArgumentParser, summary: str) -> str:
    """The page of ``pnpbroker NAME``: pnpbroker-NAME(8)."""
    lines = _header(f"pnpbroker-{name}", summary)
    lines += _synopsis(parser)
    lines += [".SH DESCRIPTION", escape(parser.description or summary)]
    lines += [".SH OPTIONS", *_options(parser)]
    lines += _exit_status()
    if name in ("run", "monitor"):
        lines += _signals()
    lines += _see_also(["pnpbroker"])
    return "\n".join(lines) + "\n"


def main_page(parser: argparse.ArgumentParser, commands: dict[str, str]) -> str:
    """pnpbroker(8): what it is, its commands, its exit codes and signals."""
    lines = _header("pnpbroker", "kernel device events in order, for programs and D-Bus")
    lines += _synopsis(parser)
    lines += [".SH DESCRIPTION", escape(parser.description or "")]
    lines += [".SH COMMANDS"]
    for name, summary in commands.items():
        lines += [".TP", f"\\fBpnpbroker {escape(name)}\\fR", escape(summary)]
    lines += [".SH OPTIONS", *_options(parser)]
    lines += _exit_status() + _signals()
    lines += _see_also([f"pnpbroker-{name}" for name in commands])
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Every page by file name (``pnpbroker.8``, ``pnpbroker-run.8``, ...)."""
    from pnpbroker.commands import COMMANDS, build_parser, subcommand_parsers

    parser = build_parser()
    summaries = {name: module.HELP for name, module in COMMANDS.items()}
    found = {f"pnpbroker.{SECTION}": main_page(parser, summaries)}
    for name, sub in subcommand_parsers(parser).items():
        found[f"pnpbroker-{name}.{SECTION}"] = command_page(name, sub, summaries[name])
    return found
