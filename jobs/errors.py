"""Named errors with the exit code the CLI maps them to.

Exit codes (the CLI conventions): 0 ok, 1 data failed a ``fail`` policy,
2 usage or configuration error, 3 runtime error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_DATA_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


class FulcrumError(Exception):
    """Base of every error fulcrum raises on purpose; carries a fix hint."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(FulcrumError):
    """The pipeline YAML is missing, malformed or has invalid values."""

    exit_code = EXIT_USAGE


class SchemaMismatchError(FulcrumError):
    """The source data does not have the columns or types the config declares."""

    exit_code = EXIT_USAGE


class SourceError(FulcrumError):
    """The source cannot be read (missing path, unreadable format, empty)."""

    exit_code = EXIT_USAGE


class EnvironmentSetupError(FulcrumError):
    """Java, the Delta jars or another runtime dependency is not available."""

    exit_code = EXIT_RUNTIME


class DataFailedError(FulcrumError):
    """The data failed an expectation whose policy is ``fail``."""

    exit_code = EXIT_DATA_FAILED


class ConcurrentWriteError(FulcrumError):
    """Another writer committed to the same Delta table first; this write made no commit."""

    exit_code = EXIT_RUNTIME
