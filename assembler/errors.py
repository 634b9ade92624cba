"""The small error hierarchy the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_SPACE = 3
EXIT_INTERRUPTED = 130


class AssemblerError(Exception):
    """Base of every error the CLI reports as `error: ...` without a traceback."""

    exit_code = EXIT_FAILED


class UsageError(AssemblerError):
    """Bad input from the user: unknown option value, missing file, conflicting options."""

    exit_code = EXIT_USAGE


class CommandError(AssemblerError):
    """A host subprocess failed; carries the command and the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{argv[0]} exited with {returncode}: {tail}")


class NoSpaceError(AssemblerError):
    """A filesystem the build writes to filled up; what was being written is gone again."""

    exit_code = EXIT_NO_SPACE

    def __init__(self, where: object, what: str) -> None:
        self.where = where
        super().__init__(
            f"no space left on the filesystem of {where} while {what}; free some room there "
            "(`assembler cache prune` for the layer cache) or write elsewhere"
        )


class BuildError(AssemblerError):
    """A build step failed."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"step {step} failed: {message}")


class DownloadError(AssemblerError):
    """A base image could not be fetched or verified; nothing unverified is left in the cache."""
