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


LOADING_COMMANDS = ("check", "batch", "serve", "tui")
SHARED_OPTIONS = ("--model", "--gpu-layers", "--threads", "--ctx", "--threshold", "--max-tokens",
                  "--max-new-tokens", "--long", "--no-normalize", "--verbose")


def test_the_model_loading_commands_declare_the_shared_options_alike() -> None:
    """`check`, `batch`, `serve` and `tui` take the same options, with the same names, help and
    defaults, and those defaults are `EngineSettings`' own."""
    from libra_edge.cli.common import engine_settings
    from libra_edge.engine.settings import EngineSettings

    parser = build_parser()
    sub = subcommands(parser)

    def declared(command: str) -> dict[str, tuple[object, ...]]:
        return {option: (tuple(a.option_strings), a.dest, a.default, a.type, a.choices, a.help, type(a).__name__)
                for a in sub.choices[command]._actions for option in a.option_strings if option in SHARED_OPTIONS}

    seen = {command: declared(command) for command in LOADING_COMMANDS}
    for command, options in seen.items():
        assert sorted(options) == sorted(SHARED_OPTIONS), command
        assert options == seen["check"], f"{command} declares a shared option unlike check"
    for command in LOADING_COMMANDS:
        args = parser.parse_args([command])
        assert engine_settings(args) == EngineSettings(), command
        given = parser.parse_args([command, "--ctx", "2048", "--threshold", "0.3", "--max-new-tokens", "64",
                                   "--long", "truncate", "--no-normalize"])
        assert engine_settings(given) == EngineSettings(ctx_per_seq=2048, threshold=0.3, max_new_tokens=64,
                                                        long="truncate", normalize=False), command


@pytest.mark.parametrize(("argv", "message"), [
    (["--ctx", "256"], "--ctx: must be at least 512 tokens, got 256"),
    (["--threshold", "1.5"], "--threshold: must be between 0 and 1, got 1.5"),
    (["--max-tokens", "0"], "--max-tokens: must be at least 1, got 0"),
    (["--threads", "0"], "--threads: must be at least 1, got 0"),
])
def test_a_shared_option_out_of_range_is_named_by_its_flag(argv: list[str], message: str) -> None:
    from libra_edge.cli.common import engine_settings
    from libra_edge.errors import LibraError

    for command in LOADING_COMMANDS:
        with pytest.raises(LibraError) as caught:
            engine_settings(build_parser().parse_args([command, *argv]))
        assert str(caught.value) == message, command
