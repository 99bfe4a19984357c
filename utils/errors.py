"""The error contract every entry point keeps, and the error classes that carry it.

Exit codes (docs/troubleshooting.md):
  0    the run did what was asked;
  1    the run worked but found problems: images it could not read and skipped, ``--check``
       findings, a download that failed (the network, not the user's input), a full disk;
  2    bad input or a bad option (a missing optional package included), reported before the long
       work where it can be found early; a refused command changes nothing on disk;
  130  interrupted by Ctrl-C (SIGINT), as shells report it;
  143  terminated by SIGTERM (``kill``, a job scheduler's time limit), as shells report it.

Whatever the code, the last line on stderr is one ``error: ...`` line naming the culprit (file,
option, value) and what was expected; no traceback unless ``--debug`` is given. This module imports
nothing from the project, so that every package (data/, modules/, utils/) can raise these errors.
"""

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class ReportedError(Exception):
    """An error the user can act on, reported as one line without a traceback.

    Subclasses name the kind of culprit (DataError, CheckpointError, OptionError, ...);
    ``exit_code`` is 2 (bad input) unless a subclass is a problem the run met (DownloadError: 1).
    """

    exit_code = EXIT_BAD_INPUT


class OptionError(ReportedError, ValueError):
    """A command-line option, or the value a --config file gives it, is not acceptable."""


class OutputError(ReportedError):
    """An output location cannot be written, or writing it would replace something the user keeps."""


class DiskFullError(OutputError):
    """A write met a full disk (or quota): a problem the run met, not bad input (exit 1). The file
    being written is named with the free space; the previous version of it is left as it was."""

    exit_code = EXIT_PROBLEMS


class MissingDependencyError(ReportedError, ImportError):
    """An optional package a feature needs (pydensecrf for --crf, faiss, ...) is not installed."""


class StoppedError(ReportedError):
    """The run honoured a stop signal at a point it names (exit 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
