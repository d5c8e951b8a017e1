"""User-facing errors and the process exit codes the CLI maps them to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of every `libra-edge` command."""

    OK = 0
    """Success. For `check`: the response was judged safe (安全)."""
    FLAGGED = 1
    """`check`: the response was judged unsafe (不安全). Lets shell scripts gate on it.
    `audit bank`: the bank or keyword library fails a rule of the standard; `audit report`:
    a gate does not pass."""
    USAGE = 2
    """Bad command line: unknown option, missing argument, conflicting flags."""
    MODEL = 3
    """No usable model: missing, not a GGUF, truncated, unsupported, or none installed."""
    INPUT = 4
    """Bad input data: unreadable file, malformed record, missing field (with file:line)."""
    NETWORK = 5
    """A download (`models pull`) failed: hub unreachable, offline mode, HTTP error; or
    `audit ask`: the service under test refused the requests (HTTP 401/403/404)."""
    CONVERSION = 6
    """A checkpoint could not be converted to GGUF."""
    INCOMPLETE = 7
    """`batch`: the run finished, but some input records were skipped (malformed) or
    some items failed; each has a placeholder row in the output saying why. `--allow-skips`
    turns this into 0. `audit ask`: some questions are not answered (each listed with its
    reason; `--resume` asks them again)."""
    DISK_FULL = 8
    """No space left for the results database or the output file; every finished item is
    kept: free space and run the same command again to continue."""
    INTERNAL = 70
    """A bug in libra-edge: please report it with the `--verbose` output."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C; finished work is kept (batch runs resume with --resume)."""


class LibraError(Exception):
    """An error caused by the user's input or environment, shown as one line (no traceback)."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ModelError(LibraError):
    """The model file is missing, unreadable, not a GGUF, truncated or unsupported."""

    exit_code = ExitCode.MODEL


class InputError(LibraError):
    """An input file or record is malformed; the message names file, line and field."""

    exit_code = ExitCode.INPUT


class DiskFullError(LibraError):
    """The results database or an output file ran out of disk space (names the file)."""

    exit_code = ExitCode.DISK_FULL


class NetworkError(LibraError):
    """A download could not be completed."""

    exit_code = ExitCode.NETWORK


class ConversionError(LibraError):
    """A Hugging Face checkpoint could not be converted."""

    exit_code = ExitCode.CONVERSION
