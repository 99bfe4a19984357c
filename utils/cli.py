"""What every entry point shares: the one-line error contract of utils/errors.py, ``--debug``, and
checks of common options (devices, counts) made before any long work starts.

An entry point opts in with two things::

    def build_parser():
        parser = ArgumentParser(description=__doc__)   # has --debug; no abbreviations
        ...

    @entry_point
    def main(argv=None):
        args = build_parser().parse_args(argv)
        ...

``main(argv)`` then returns the exit code instead of raising, which is also what tests and
demo.py call.
"""

import argparse
import contextlib
import functools
import gc
import logging
import os
import re
import signal
import sys
import threading
import traceback

from utils.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_PROBLEMS,
    EXIT_TERMINATED,
    OptionError,
    ReportedError,
)
from utils.files import disk_full_error, is_disk_full

DEBUG_FLAG = "--debug"
DEBUG_ENV = "IDDC_DEBUG"
LOGGER_NAME = "iddc"


CONFIG_REQUIRED = "required, unless --config gives it"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless its text already says it ("default ...").

    A flag's default reads "off"/"on", a list's its items, None "none" (the option is not set);
    options that a --config may supply say that they are required unless it does.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if getattr(action, "required_unless_config", False):
            return f"{text} ({CONFIG_REQUIRED})"
        if action.default is argparse.SUPPRESS or action.required or not action.option_strings:
            return text
        if states_default(text):
            return text
        return f"{text} (default: {shown_default(action)})"


def states_default(text):
    """Whether a help text says its default itself: "default: X", "(default X", "; default X"."""
    return re.search(r"default:|[(;,] ?default\b", text, re.IGNORECASE) is not None


def shown_default(action):
    """An option's default as --help shows it; ``%`` doubled for argparse's own formatting."""
    default = action.default
    if action.nargs == 0 and isinstance(default, bool):
        shown = "on" if default else "off"
    elif default is None:
        shown = "none"
    elif isinstance(default, (list, tuple)):
        shown = " ".join(map(str, default))
    else:
        shown = str(default)
    return shown.replace("%", "%%")


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every command: the same contract for usage errors as for every other error.

    ``allow_abbrev`` is off, so a prefix (``--check`` for ``--checkpoint-every``, ``--deb``) is an
    unknown option instead of silently another one; a usage error is one ``error:`` line on stderr
    naming the option, with exit 2 (argparse's own prints the whole usage first). ``--debug`` is
    added to every parser. The help shows docstrings' line breaks as written, and every option's
    default (:class:`HelpFormatter`).

    ``add_argument(..., required_unless_config=True)`` marks an option that is required unless the
    ``--config`` file gives it (utils/config.py checks it after parsing).
    """

    def __init__(self, *args, debug_flag=True, **kwargs):
        kwargs["allow_abbrev"] = False
        # Every command's help shows its defaults: a formatter asked for (RawDescriptionHelpFormatter, as
        # the commands used before) is replaced by this one, which keeps the description's lines too.
        if not issubclass(kwargs.get("formatter_class", HelpFormatter), HelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        if debug_flag:
            self.add_argument(
                DEBUG_FLAG,
                action="store_true",
                help=f"show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1)",
            )

    def add_argument(self, *args, required_unless_config=False, **kwargs):
        action = super().add_argument(*args, **kwargs)
        action.required_unless_config = required_unless_config
        return action

    def add_renamed_option(self, old, new, why):
        """Accept the old name ``old`` of the option ``new`` (same values, same destination), with a
        ``note:`` line on stderr that names the new one, so that old command lines keep working."""
        target = next(action for action in self._actions if new in action.option_strings)
        return self.add_argument(
            old,
            action=_RenamedOption,
            new_name=new,
            why=why,
            dest=target.dest,
            type=target.type,
            choices=target.choices,
            nargs=target.nargs,
            metavar=target.metavar,
            default=argparse.SUPPRESS,
            help=f"the old name of {new}",
        )

    def error(self, message):
        _finish_output()
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


class _RenamedOption(argparse.Action):
    """The old name of an option: stores as the new one does, after a note that names the new one."""

    def __init__(self, option_strings, dest, new_name, why, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name
        self.why = why

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now {self.new_name} ({self.why}); the old name still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def entry_point(main):
    """Decorate ``main(argv)`` so that it keeps the exit-code contract (see :func:`run_cli`)."""

    @functools.wraps(main)
    def run(argv=None):
        return run_cli(main, argv)

    return run


class Terminated(BaseException):
    """SIGTERM, raised in the main process like KeyboardInterrupt for SIGINT (see :func:`run_cli`)."""


def run_cli(main, argv=None):
    """``main(argv)``'s exit code; errors become one last line on stderr and an exit code.

    ReportedError and its kinds: their own code (2 bad input, 1 a problem the run met). Files the
    system refuses (permissions, a folder where a file should be): 2. Out of memory: 1, with the
    usual remedy. Ctrl-C: 130; SIGTERM: 143. Anything else is a bug: its traceback, then one line
    that says so. With --debug (or IDDC_DEBUG=1) every error propagates with its traceback.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with _sigterm_raises(), contextlib.ExitStack() as held:
            _COMMAND_SCOPES.append(held)
            try:
                return main(argv)
            finally:
                _COMMAND_SCOPES.pop()
    except (Exception, KeyboardInterrupt, Terminated) as err:
        if debug:
            raise
        code, message = _classify(err)
        # Free the frames' locals now, by reference counting: a DataLoader iterator freed later by
        # the garbage collector may find its worker queues collected first and wait 5 s per worker.
        traceback.clear_frames(err.__traceback__)
    _finish_output()
    _log_to_files(message)
    print(message, file=sys.stderr, flush=True)
    return code


_COMMAND_SCOPES = []  # the ExitStack of each command running (demo.py runs others inside its own)


def hold_until_exit(context_manager):
    """Enter ``context_manager`` until the running command's ``main`` returns or fails (a lock on
    its output folder, say), so that it takes one line in ``main``; outside a command, until the
    process ends."""
    if not _COMMAND_SCOPES:
        _COMMAND_SCOPES.append(contextlib.ExitStack())  # never closed: the process's end releases it
    return _COMMAND_SCOPES[-1].enter_context(context_manager)


def worker_message(err):
    """The message of ``err`` as it was raised, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process with the same type, but with the
    worker's whole traceback as its message; the original message is after the last line that
    starts with the exception's qualified name.
    """
    text = str(err)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    kind = type(err)
    name = (
        kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    )
    marker = f"\n{name}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


def _classify(err):
    """Exit code and last line for an exception; the traceback is printed only for a bug."""
    text = worker_message(err)
    first_line = text.splitlines()[0] if text else type(err).__name__
    if isinstance(err, ReportedError):
        # A message with details (every mismatched key of a checkpoint, ...): the details first,
        # so that the last line still is the one error line.
        first, *details = text.splitlines() or [type(err).__name__]
        return err.exit_code, "\n".join([*details, f"error: {first}" + (" (details above)" if details else "")])
    # On a line of their own: a signal can stop a progress bar half-drawn.
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "\nerror: interrupted by Ctrl-C (SIGINT) before the end"
    if isinstance(err, Terminated):
        return EXIT_TERMINATED, "\nerror: terminated by SIGTERM before the end"
    if (
        isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
    ):  # torch.OutOfMemoryError, without torch
        return EXIT_PROBLEMS, f"error: out of memory ({first_line}); lower --batch-size (or --num-workers)"
    if "DataLoader worker" in text and "killed by signal" in text:
        return EXIT_PROBLEMS, (
            f"error: a data-loading worker was killed ({first_line}); usually out of memory: "
            f"lower --num-workers or --batch-size"
        )
    if is_disk_full(err):  # a write outside the atomic helpers, which name their file themselves
        return EXIT_PROBLEMS, str(disk_full_error(err.filename or os.getcwd()))
    if isinstance(err, OSError) and err.filename is not None:
        return EXIT_BAD_INPUT, f"error: {err.filename}: {err.strerror or err}"
    traceback.print_exc()
    return EXIT_PROBLEMS, (
        f"error: unexpected {type(err).__name__}: {first_line} -- a bug of iddc; "
        f"please report it with the traceback above (--debug shows it unabridged)"
    )


def _finish_output():
    """Close progress bars and flush stdout, so that the error line really is the last line.

    A bar left open by the exception would otherwise be closed (and redrawn) when the garbage
    collector frees it, after the message. The collection runs only when a bar is alive: over
    torch's many objects it costs a noticeable fraction of a second, for usage errors too.
    """
    tqdm_module = sys.modules.get("tqdm")
    bars = getattr(tqdm_module.tqdm, "_instances", ()) if tqdm_module is not None else ()
    if len(bars):
        gc.collect()
        for bar in list(bars):
            bar.close()
    sys.stdout.flush()
    sys.stderr.flush()


def _log_to_files(message):
    """Record the error in the run's log files (train.log), not only on the terminal."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(Exception):  # the log's disk may be the full one: the terminal has it
                handler.emit(logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message.strip(), None, None))
                handler.flush()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`Terminated` in this (main) process while the block runs.

    Python's default for SIGTERM is to die at once, without the error line. Processes forked
    meanwhile (CRF workers) inherit the handler; in them it dies as by default, so that
    ``Pool.terminate()`` still ends them quietly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigint_held():
    """Hold Ctrl-C (SIGINT) and SIGTERM while the block runs, e.g. while DataLoader workers are forked.

    A KeyboardInterrupt raised during a fork lands in Python's at-fork handlers, which print
    "Exception ignored" and swallow it (the run goes on as if nothing were pressed), or in the
    middle of the loader's set-up, whose clean-up then fails with a traceback. Held, the signal is
    delivered when the block ends. Workers forked meanwhile keep the holding handler: the signal
    does not kill them, the main process shuts them down.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda number, frame: received.append(number)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):
        if callable(previous[signum]):
            previous[signum](signum, None)  # the default SIGINT handler raises KeyboardInterrupt
        elif previous[signum] == signal.SIG_DFL:
            os.kill(os.getpid(), signum)


def quiet_hangups(worker_id=None):
    """In a DataLoader worker (its ``worker_init_fn``): no traceback when the main process hangs up.

    A worker hands each batch's tensors to the main process through a thread of its own that passes
    file descriptors (multiprocessing's resource sharer). Ctrl-C in the main process in the middle
    of such a hand-over resets the thread's connection, and the thread prints the
    ConnectionResetError's traceback with ``sys.excepthook``, after the one error line of the
    contract. The main process reports the interruption; its echo in the worker is dropped. In a
    worker nothing else goes through ``sys.excepthook``: torch reports the worker's own errors.
    """
    previous = sys.excepthook

    def excepthook(kind, value, trace):
        if not issubclass(kind, (ConnectionError, EOFError)):
            previous(kind, value, trace)

    sys.excepthook = excepthook


def resolve_device(name):
    """The --device string to use: the given one, checked, or cuda when a GPU is visible, else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"--device {name}: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                f"use --device cpu, or install the CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible (cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type != "cpu":
        raise OptionError(f"--device {name}: expected cpu, cuda or cuda:N")
    return name


def check_at_least(value, option, minimum):
    """``value`` (None allowed, meaning "not given") is an integer >= ``minimum``."""
    if value is not None and value < minimum:
        raise OptionError(f"{option} must be >= {minimum}, got {value}")


def check_finite(value, option, positive=False):
    """A float option is a real number (and > 0 when ``positive``): no nan, no inf."""
    if value is None:
        return
    if value != value or value in (float("inf"), float("-inf")) or (positive and value <= 0):
        raise OptionError(f"{option} must be a {'positive ' if positive else ''}finite number, got {value}")
