"""Command line ``taichi-xray``: ``render``, ``info``, ``view``, ``import-labels``, ``geometry`` (and
``register`` / ``generate`` when their modules are installed).

Each command is a module of this package with ``add_parser(subparsers)`` and
``run(args) -> int``; :data:`COMMANDS` lists them in the order of ``--help``, and a listed
module that does not exist is left out (:func:`command_modules`), so a command is added by
writing ``taichi_xray/cli/NAME.py`` and naming it here.

Output: without ``-v`` only the command's own lines (``wrote ...``), warnings and errors;
``-v`` adds the Taichi version and backend, the library's messages (why ``auto`` passed over
a GPU) and, for errors, the traceback; ``-q`` keeps only warnings and errors.

Errors: a user error (a bad scene, option or input file, an existing output without
``--force``, a mesh or geometry problem, a backend that cannot be used) prints one line
``taichi-xray: error: ...`` to stderr and exits with status 2. ValueError, KeyError and
TypeError count as user errors when this package raised them on purpose (a ``raise``
statement in taichi_xray's code: input validation); anything else is a bug and propagates
with its traceback (exit status 1).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import linecache
import logging
import os
import sys
import traceback
import warnings

from .common import UsageError, log, parse_size, parse_sweep
from .render import matrix_path, output_paths

__all__ = ["main", "build_parser", "parse_size", "parse_sweep", "output_paths", "matrix_path", "UsageError",
           "COMMANDS", "command_modules", "is_user_error"]

# command modules (taichi_xray/cli/NAME.py), in the order of --help
COMMANDS = ("render", "info", "view", "geometry", "import_labels", "register", "generate")
GLOBAL_OPTIONS = ("-v", "--verbose", "-q", "--quiet")


def command_modules() -> list:
    """The modules of :data:`COMMANDS` that exist (``register``/``generate`` may not yet)."""
    mods = []
    for name in COMMANDS:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is not None:
            mods.append(importlib.import_module(full))
    return mods


class _StderrHandler(logging.Handler):
    def emit(self, record):  # writes to the current sys.stderr (pytest swaps it)
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover
            self.handleError(record)


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own behaviour, minus the usage block)
        if self.prog == "taichi-xray":
            if message.startswith("unrecognized arguments") and any(a in message.split() for a in GLOBAL_OPTIONS):
                message += " (-v/--verbose and -q/--quiet go before the command: taichi-xray -v render ...)"
            raise UsageError(message)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taichi-xray", description="Differentiable X-ray simulator for triangle meshes.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="Taichi version and backend, library messages, tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for mod in command_modules():
        mod.add_parser(sub)
    return parser


# ----------------------------------------------------------------------------------------
# error policy
# ----------------------------------------------------------------------------------------
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _user_error_types() -> tuple:
    from ..pipeline import NestingError
    from ..rasterize import GeometryError
    from ..runtime import BackendError
    from ..scene import SceneError

    return (UsageError, SceneError, GeometryError, NestingError, BackendError, FileNotFoundError,
            FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _raised_on_purpose(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``raise`` statement in taichi_xray's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_PACKAGE_DIR + os.sep):
        return False
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return line.startswith("raise ")


def is_user_error(exc: BaseException) -> bool:
    """The CLI's error policy: True for errors in the user's input (one line, exit 2)."""
    if isinstance(exc, _user_error_types()):
        return True
    return isinstance(exc, (ValueError, KeyError, TypeError)) and _raised_on_purpose(exc)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:  # e.g. PermissionError from open()
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"taichi-xray: warning: {message}", file=sys.stderr)


def _configure_logging(verbose: bool, quiet: bool) -> list:
    """Handler on the 'taichi_xray' logger; the library's messages at -v only, the commands'
    (taichi_xray.cli) at INFO unless -q. Returns what to restore."""
    lib, cli = logging.getLogger("taichi_xray"), log
    saved = [(lib, lib.level, lib.propagate), (cli, cli.level, cli.propagate)]
    if _HANDLER not in lib.handlers:
        lib.addHandler(_HANDLER)
    lib.setLevel(logging.DEBUG if verbose else logging.WARNING)
    lib.propagate = False
    cli.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    return saved


def main(argv=None) -> int:
    """Entry point of ``taichi-xray``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"taichi-xray: error: {exc}", file=sys.stderr)
        return 2
    verbose = bool(args.verbose) and not args.quiet
    saved = _configure_logging(verbose, args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _showwarning
            return args.func(args)
    except BrokenPipeError:  # pragma: no cover - e.g. `taichi-xray info x.toml | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        print("taichi-xray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_user_error(exc):
            raise  # a bug: the traceback is the useful report
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"taichi-xray: error: {_message(exc)}", file=sys.stderr)
        return 2
    finally:
        for lg, level, prop in saved:
            lg.setLevel(level)
            lg.propagate = prop
