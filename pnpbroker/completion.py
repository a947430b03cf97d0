"""Bash completion made from the command line's own parser (``pnpbroker install`` writes it).

Commands, then each command's options; after an option that takes a path, file names; after
one with choices, the choices; a command's positional choices (``control pause``) too. It works
with or without the bash-completion package (``_init_completion`` is used when it is there).
"""

from __future__ import annotations

import argparse
import re
import shlex

#: Metavar words and destinations that name files or directories.
_PATHS = frozenset({"PATH", "DIR", "FILE", "DEVICE", "config", "prefix", "destdir", "program"})

_SCRIPT = """\
# bash completion for pnpbroker; generated from its argument parser by pnpbroker install.
_pnpbroker() {{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        cur=${{COMP_WORDS[COMP_CWORD]}}
        prev=${{COMP_WORDS[COMP_CWORD-1]}}
        words=("${{COMP_WORDS[@]}}")
        cword=$COMP_CWORD
    fi
    COMPREPLY=()
    local command="" i
    for ((i = 1; i < cword; i++)); do
        case ${{words[i]}} in
            -*) ;;
            *) command=${{words[i]}}; break ;;
        esac
    done
    local options="" paths="" values="" choices="" subsystems=""
    case $command in
        "") COMPREPLY=($(compgen -W {commands} -- "$cur")); return ;;
{cases}
    esac
    case " $paths " in *" $prev "*) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
    case " $subsystems " in *" $prev "*)
        COMPREPLY=($(compgen -W "$(ls /sys/class /sys/bus 2>/dev/null | sort -u)" -- "$cur"))
        return ;;
    esac
    case " $values " in *" $prev "*) return ;; esac
{value_choices}
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    elif [[ -n $choices ]]; then
        COMPREPLY=($(compgen -W "$choices" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _pnpbroker pnpbroker
"""


def _takes_path(action: argparse.Action) -> bool:
    if getattr(action.type, "__name__", "") == "Path" or action.dest in _PATHS:
        return True
    return bool(_PATHS & set(re.split(r"[^A-Za-z_]+", str(action.metavar or ""))))


def _case(name: str, parser: argparse.ArgumentParser) -> str:
    options: list[str] = []
    paths: list[str] = []
    values: list[str] = []
    choices: list[str] = []
    subsystems: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            choices += [str(c) for c in action.choices or ()]
            continue
        options += action.option_strings
        if action.nargs == 0 or action.choices is not None:
            continue
        if action.dest == "subsystem":
            subsystems.extend(action.option_strings)
        else:
            (paths if _takes_path(action) else values).extend(action.option_strings)
    fields = {
        "options": options,
        "paths": paths,
        "values": values,
        "choices": choices,
        "subsystems": subsystems,
    }
    assigned = " ".join(f"{key}={shlex.quote(' '.join(v))}" for key, v in fields.items())
    return f"        {name}) {assigned} ;;"


def _value_choices(parsers: dict[str, argparse.ArgumentParser]) -> str:
    """``case $prev``: options whose value is one of a few choices."""
    lines = []
    for parser in parsers.values():
        for action in parser._actions:
            if action.option_strings and action.choices is not None:
                words = shlex.quote(" ".join(map(str, action.choices)))
                pattern = "|".join(action.option_strings)
                reply = f'COMPREPLY=($(compgen -W {words} -- "$cur")); return'
                lines.append(f"        {pattern}) {reply} ;;")
    if not lines:
        return ""
    return "    case $prev in\n" + "\n".join(dict.fromkeys(lines)) + "\n    esac"


def script() -> str:
    """The completion script for bash."""
    from pnpbroker.commands import build_parser, subcommand_parsers

    parsers = subcommand_parsers(build_parser())
    commands = shlex.quote(" ".join([*parsers, "--help", "--version"]))
    cases = "\n".join(_case(name, parser) for name, parser in parsers.items())
    return _SCRIPT.format(commands=commands, cases=cases, value_choices=_value_choices(parsers))
