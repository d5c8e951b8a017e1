"""Every subcommand's one-line help is the first line of a docstring, so the two never drift."""

from __future__ import annotations

import argparse
import importlib

import pytest

from libra_edge.cli.common import help_from_doc
from libra_edge.cli.main import COMMANDS, build_parser


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(found) == 1
    return found[0]


def test_help_is_the_docstring_line_without_its_prefix() -> None:
    assert help_from_doc('"""`libra-edge check`: judge one pair."""'.strip('"')) == "judge one pair"
    assert help_from_doc("`libra-edge tui` (also a bare `libra-edge`): the terminal UI.\n\nMore.") == (
        "the terminal UI")
    assert help_from_doc("List the installed models (* marks the default).") == (
        "list the installed models (* marks the default)")
    assert help_from_doc("Re-hash the models.") == "re-hash the models"
    assert help_from_doc("Libra-Test metrics.") == "Libra-Test metrics"
    assert help_from_doc("GGUF metadata.") == "GGUF metadata"
    with pytest.raises(ValueError, match="needs a docstring"):
        help_from_doc(None)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_help_is_its_module_docstring(command: str) -> None:
    sub = subcommands(build_parser())
    [action] = [a for a in sub._choices_actions if a.dest == command]
    module = importlib.import_module(f"libra_edge.cli.{command}")
    assert action.help == help_from_doc(module.__doc__), (
        f"libra_edge/cli/{command}.py: register with help=help_from_doc(__doc__) "
        "(the module docstring's first line says what the command does)")


def test_a_nested_subcommand_help_is_its_run_function_docstring() -> None:
    sub = subcommands(build_parser())
    nested = 0
    for command, parser in sub.choices.items():
        inner = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in inner[0]._choices_actions if inner else []:
            func = inner[0].choices[action.dest].get_default("func")
            assert action.help == help_from_doc(func.__doc__), f"{command} {action.dest}"
            nested += 1
    assert nested >= 8  # models list/info/pull/import/export/verify/rm/default at least
