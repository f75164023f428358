"""What the command lines (``training.fit``, ``.evaluate``, ``.score``, ``.serve``, ``.synthetic``, ``.data``) share.

One contract for all of them: ``main(argv) -> int`` never lets
:class:`SystemExit` escape; exit code 0 on success, 2 on bad input (with a
one-line ``error:`` on stderr naming the problem and the fix), 1 when an
output cannot be written or the run fails for another reason than its input
(a worker process died); ``--quiet`` hides the progress bars.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from estimators.kinds import ESTIMATOR_KINDS

from .defaults import (
    AUTO_WORKERS_FROM_ROWS,
    FIT_STRATEGIES,
    MAX_AUTO_WORKERS,
    MIN_FULLY_LOGGED,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
)

# Light on purpose: the command lines' parsers are built from this module, so ``--help`` and usage errors are
# answered without importing pandas, Numba or LightGBM (tests/test_cli_vocabulary.py checks it). The key
# handling imports cryptography and training.artifact when it is used.

__all__ = ["BAD_INPUT", "CANNOT_WRITE", "INTERRUPTED", "SCORE_EXIT_STATUS", "TERMINATED", "HelpFormatter",
           "Interrupted",
           "OutputError", "add_artifact_argument", "add_budget_arguments", "add_log_arguments", "add_quiet_argument",
           "add_shadow_arguments", "RunFailed", "add_verify_arguments", "check_writable", "data_parser",
           "evaluate_parser", "exit_status", "fail", "fit_parser", "fraction", "ignored_columns", "key_from_env",
           "logged_parser", "logs_summary", "model_names", "non_negative_int", "one_line_warnings",
           "parse_or_exit_code", "positive_float", "positive_int", "quality_range", "refuse_inputs_as_outputs",
           "run_command", "same_file", "score_parser", "synthetic_parser", "verification_key", "writing"]

#: Exit code of a run whose input cannot be used.
BAD_INPUT = 2
#: Exit code of a run whose output cannot be written.
CANNOT_WRITE = 1
#: Exit codes after Ctrl-C (SIGINT) and SIGTERM: 128 + the signal number, as shells report them.
INTERRUPTED, TERMINATED = 130, 143


#: What :func:`key_from_env` accepts as a variable name (POSIX's portable names).
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OutputError(OSError):
    """An output file cannot be written (exit code 1)."""


class RunFailed(RuntimeError):
    """The run could not complete for a reason other than its input, e.g. a worker process died (exit code 1)."""


class Interrupted(Exception):
    """SIGTERM arrived: unwind like Ctrl-C (``finally`` blocks clean up), then exit 143."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def writing(flag: str, path: str | Path) -> Iterator[None]:
    """Turn an :class:`OSError` while writing ``path`` into an :class:`OutputError` naming ``flag``.

    So that an unwritable output ends the command with exit code 1 and a
    message saying which flag to change, not with a traceback.

    Parameters
    ----------
    flag : str
        The command-line flag the path came from (``--out``), so the message says what to change.
    path : str or Path
        The file being written, quoted in the message.

    Yields
    ------
    None
        Control to the ``with`` block that writes ``path``.

    Raises
    ------
    OutputError
        If the block raises an :class:`OSError` (an :class:`OutputError` passes unchanged).
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write {flag} {path} ({error}); pick a path in a writable directory") from error


def check_writable(flag: str, path: str | Path, *, directory: bool = False) -> None:
    """Refuse an output that cannot be written, before any work is done, so that a long run does not fail at its end.

    The path may not exist yet: its nearest existing ancestor must then be a
    writable directory (the missing folders are created when writing).

    Parameters
    ----------
    flag : str
        The command-line flag the path came from (``--out``), named in the message.
    path : str or Path
        The output: a file, or with ``directory`` a folder that will hold files.
    directory : bool, default=False
        Whether ``path`` is a folder to write into rather than a file.

    Raises
    ------
    OutputError
        If ``path`` is a directory where a file is wanted (or a file where a
        folder is), or it or the folder it would be created in is not writable.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise OutputError(f"cannot write {flag} {path}: it is {kind}; give a {'folder' if directory else 'file'} path")
    if directory and path.exists():
        folder = path  # the files go in it
    else:  # a file is written beside its name and renamed into place; missing folders are made in the first
        # existing one
        folder = next(parent for parent in path.absolute().parents if parent.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {flag} {path}: {folder} is not a writable directory; "
                          "pick a path in a writable directory")
    # os.access trusts the mode bits, which root passes and some mounts (FUSE, overlay, /proc) ignore:
    # creating and removing a file is the only test that the write at the end of the run will work
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"cannot write {flag} {path}: no file can be created in {folder} ({error}); "
                          "pick a path in a writable directory") from error


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file: equal once links and ``..`` are resolved, or the same inode.

    Parameters
    ----------
    a, b : str or Path

    Returns
    -------
    bool
        ``True`` for a symbolic link and its target, and for two hard links
        to one file (``os.path.samefile``, when both exist).
    """
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs_as_outputs(outputs: Iterable[tuple[str, str | Path]],
                             inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse, before any work, an output path that is one of the command's inputs or lies inside an input folder.

    Every command compares every path it writes with every path it reads,
    so that a slip (``--out logs.parquet``) cannot replace the data the run
    was given.

    Parameters
    ----------
    outputs : iterable of (str, str or Path)
        ``(flag, path)`` of every file or folder the command writes.
    inputs : iterable of (str, str or Path or None)
        ``(flag, path)`` of every file or folder it reads (``None``: not given).

    Raises
    ------
    ValueError
        Naming the output flag, the input flag and the path (exit code 2 in
        the command lines).
    """
    given = [(flag, Path(path)) for flag, path in inputs if path is not None]
    for out_flag, out_path in outputs:
        out = Path(out_path)
        for in_flag, source in given:
            if same_file(out, source):
                raise ValueError(f"{out_flag} {out} is {in_flag} {source}: the run would overwrite its own input; "
                                 f"give {out_flag} another path")
            if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
                raise ValueError(f"{out_flag} {out} is inside the {in_flag} folder {source}: it would become part "
                                 f"of that input; give {out_flag} a path outside it")


def key_from_env(flag: str, name: str | None) -> Any:
    """The artifact key held by environment variable ``name`` (``None`` when the flag was not given).

    Keys come from the environment only: on the command line they would be
    readable by every user (``ps``) and kept in shell histories, and a file
    beside the artifact is writable by whoever can replace the artifact.
    The variable holds an Ed25519 key's PEM text (the private key for
    ``--sign-key-env``), or a deprecated shared HMAC secret.

    Parameters
    ----------
    flag : str
        The flag that named the variable (``--sign-key-env``), for the message.
    name : str or None
        The variable's name.

    Returns
    -------
    Ed25519PrivateKey, Ed25519PublicKey, bytes or None
        As :func:`training.artifact.signing_key` returns it.

    Raises
    ------
    ValueError
        If the variable is unset or empty, or the key unusable
        (:func:`training.artifact.signing_key`); the message never shows the key.
    """
    if name is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .artifact import signing_key

    if not _ENVIRONMENT_NAME.fullmatch(name):  # not echoed: it may be the key itself, given by mistake
        raise ValueError(f"{flag} takes the name of an environment variable (letters, digits and '_'), and what "
                         "was given is not one; put the key in a variable (export NAME=...) and pass NAME")
    value = os.environ.get(name, "")
    if not value:
        state = "empty" if name in os.environ else "unset"
        raise ValueError(f"{flag} {name}: the environment variable {name} is {state}; "
                         f"export {name} with the artifact key, or leave out {flag}")
    try:
        key = signing_key(value)
    except ValueError as error:
        raise ValueError(f"{flag} {name}: {error}") from None
    if flag == "--sign-key-env" and isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{flag} {name}: the variable holds a public key, which verifies but cannot sign; "
                         "put the private key's PEM in it (python -m training.keygen makes a pair)")
    return key


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """``--verify-key``, ``--verify-key-env`` and ``--require-signed``.

    The same for every command that loads an artifact.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument("--verify-key", type=Path, default=None, metavar="PATH",
                        help="refuse, before unpickling it, an artifact that is unsigned or not signed by the private "
                             "key whose Ed25519 public key (PEM) is in PATH (python -m training.keygen makes the "
                             "pair); default: load it unverified, with a warning")
    parser.add_argument("--verify-key-env", default=None, metavar="NAME",
                        help="deprecated: verify an artifact signed with a shared HMAC secret held by environment "
                             "variable NAME (a secret that verifies can also sign: move to --verify-key)")
    parser.add_argument("--require-signed", action="store_true",
                        help="refuse to start without --verify-key (or --verify-key-env), so that a deployment "
                             "that lost its key flag fails instead of loading unverified artifacts")


def verification_key(args: argparse.Namespace) -> Any:
    """The key of :func:`add_verify_arguments`' flags, read and checked before any work (``None``: none given).

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    Ed25519PublicKey, Ed25519PrivateKey, bytes or None

    Raises
    ------
    ValueError
        If both flags are given, ``--require-signed`` without either, or
        the key cannot be read or used.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .artifact import signing_key

    if args.verify_key is not None and args.verify_key_env is not None:
        raise ValueError("give --verify-key (an Ed25519 public key) or the deprecated --verify-key-env, not both")
    if args.verify_key is not None:
        try:
            pem = Path(args.verify_key).read_bytes()[:1 << 16]
        except OSError as error:
            raise ValueError(f"--verify-key {args.verify_key}: cannot read it ({error.strerror}); give the public "
                             "key file python -m training.keygen wrote") from None
        try:
            key = signing_key(pem)
        except ValueError as error:
            raise ValueError(f"--verify-key {args.verify_key}: {error}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"--verify-key {args.verify_key}: the file does not hold an Ed25519 public key in PEM "
                             "(a private key must not be given to verifiers); give the public key file")
        return key
    key = key_from_env("--verify-key-env", args.verify_key_env)
    if key is None and getattr(args, "require_signed", False):
        raise ValueError("--require-signed: no key to verify the artifact with; give --verify-key FILE (the "
                         "signer's Ed25519 public key)")
    return key


def quality_range(text: str) -> tuple[float, float]:
    """Parse ``--quality-range LO,HI`` (argparse ``type``).

    So a scale other than [0, 1] can be given on the command line.

    Parameters
    ----------
    text : str
        Two finite numbers separated by a comma, ``LO <= HI``.

    Returns
    -------
    (float, float)

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not of that form.
    """
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. 0,100), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise argparse.ArgumentTypeError(f"expected finite LO <= HI, got {text!r}")
    return low, high


def ignored_columns(text: str) -> list[str]:
    """Parse ``--ignore-columns task,subtask`` (argparse ``type``): per-query inputs to read the table without.

    Parameters
    ----------
    text : str
        Comma-separated names, each one of ``prompt``, ``task``, ``subtask``.

    Returns
    -------
    list of str
        The names, once each.

    Raises
    ------
    argparse.ArgumentTypeError
        If a name is not one of those, or none is given.
    """
    from estimators.table import IGNORABLE_COLUMNS

    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in IGNORABLE_COLUMNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names among {sorted(IGNORABLE_COLUMNS)}, "
                                         f"got {text!r}")
    return names


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``, else a usage error naming both."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value
    return parse


def model_names(text: str) -> list[str]:
    """Parse ``--models A,B,C`` (argparse ``type``): model names, comma-separated, each once.

    Parameters
    ----------
    text : str

    Returns
    -------
    list of str

    Raises
    ------
    argparse.ArgumentTypeError
        If a name is empty (``a,,b``, a trailing comma).
    """
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty model name in {text!r}; separate names with single commas")
    return list(dict.fromkeys(names))


#: argparse ``type``s for counts (>= 1) and seeds or limits that may be 0.
positive_int, non_negative_int = _whole_number(1), _whole_number(0)


def parse_or_exit_code(parse: Callable[[Sequence[str] | None], argparse.Namespace],
                       argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse asked for (0 after ``--help``, 2 on a usage error).

    argparse has already printed the help or the usage error; returning the
    code instead of raising lets ``main`` be called from Python without a
    ``SystemExit``.

    Parameters
    ----------
    parse : callable
        The command's argument parser: takes ``argv``, returns the options,
        raises :class:`SystemExit` after ``--help`` or a usage error.
    argv : sequence of str or None
        Arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace or int
        The options, or the exit code: that of the :class:`SystemExit`
        when it is an int, 0 when it is ``None``, :data:`BAD_INPUT` otherwise.
    """
    try:
        return parse(argv)
    except SystemExit as exit_request:
        code = exit_request.code
        return code if isinstance(code, int) else 0 if code is None else BAD_INPUT


def fail(message: str, *, code: int = BAD_INPUT) -> int:
    """Print ``error: message`` as one line on stderr and return ``code``, so a bad run ends with one readable reason.

    Parameters
    ----------
    message : str
        The reason; runs of whitespace (newlines included) become single spaces.
    code : int, default=BAD_INPUT
        The exit code to return.

    Returns
    -------
    int
        ``code``, for ``return fail(...)`` in a ``main``.
    """
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show warnings as one ``warning: message`` line on stderr, without the Python source line.

    A command line's user did not write the line that warned (``warnings.warn(...)`` deep in the library):
    the default format quotes it, which reads as a crash. Filters are unchanged, so a warning still shows
    once where Python shows it once (the unsigned-artifact warning: once per process and artifact), and
    ``pytest.warns`` or ``-W error`` still see it.
    """
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def run_command(argv: Sequence[str] | None, parse: Callable[[Sequence[str] | None], argparse.Namespace],
                job: Callable[[argparse.Namespace], Any], finish: Callable[[Any], int], *,
                on_interrupt: str = "") -> int:
    """Parse, run ``job``, and map its failures to the exit codes of the contract.

    Parameters
    ----------
    argv : sequence of str or None
        Arguments without the program name (``None``: ``sys.argv[1:]``).
    parse : callable
        The command's argument parser (``parse_args``).
    job : callable
        Does the work; raises :class:`OutputError` when an output cannot be
        written, :class:`RunFailed` when the run fails otherwise (a worker
        died), ``ValueError``/``TypeError``/``FileNotFoundError`` on bad input.
    finish : callable
        Prints the job's result and returns the exit code.
    on_interrupt : str, optional
        Added to the message when Ctrl-C or SIGTERM stops the job (what was kept, how to go on).

    Returns
    -------
    int
        0 ok, 2 bad input, 1 an output could not be written or the run failed, 130 after
        Ctrl-C, 143 after SIGTERM (or what ``finish`` returns; 0 when its
        printing finds stdout closed, as under ``| head``: the job is done).
    """
    args = parse_or_exit_code(parse, argv)
    if isinstance(args, int):
        return args
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    try:
        with one_line_warnings():
            result = job(args)
    except (OutputError, RunFailed) as error:
        return fail(str(error), code=CANNOT_WRITE)
    except (ValueError, TypeError, FileNotFoundError) as error:  # bad data or artifact, a budget no policy fits
        return fail(str(error))
    except KeyboardInterrupt:
        return fail(f"interrupted (Ctrl-C); {on_interrupt or 'nothing was written under the output names'}",
                    code=INTERRUPTED)
    except Interrupted:
        return fail(f"terminated (SIGTERM); {on_interrupt or 'nothing was written under the output names'}",
                    code=TERMINATED)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    try:
        return finish(result)
    except BrokenPipeError:  # stdout's reader left (``| head``): the work is done and written, say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 0


def logs_summary(train_coverage: list[dict], used: dict) -> list[str]:
    """Lines saying how much of the training traffic each model is logged on, and what the policies were fitted on.

    Parameters
    ----------
    train_coverage : list of dict
        :func:`training.data.coverage` of the training split.
    used : dict
        The calibration record of :func:`training.episodes.calibration_episodes`.

    Returns
    -------
    list of str
    """
    if all(row["share"] == 1.0 for row in train_coverage) and used["imputed_cells"] == 0:
        return ["logs: every model logged on every query"]
    width = max(len(row["model"]) for row in train_coverage)
    lines = ["logs: training queries logged per model"]
    lines += [f"  {row['model']:<{width}} {row['logged']:>9,} {row['share']:>6.1%}" for row in train_coverage]
    if used["method"] == "fully_logged":
        lines.append(f"calibration: the {used['n_used']:,} of {used['n_queries']:,} calibration queries logged for "
                     f"every model (at least --min-fully-logged {used['min_fully_logged']})")
    else:
        lines.append(f"calibration: direct method on all {used['n_used']:,} calibration queries "
                     f"({used['n_fully_logged']:,} fully logged, fewer than --min-fully-logged "
                     f"{used['min_fully_logged']}; {used['imputed_cells']:,} outcomes not logged were predicted by "
                     "the estimator)")
    return lines


# --------------------------------------------------------------------------- #
# the argument vocabulary: one definition per concept, used by every command line that has it
# --------------------------------------------------------------------------- #


def exit_status(bad_input: str, cannot_write: str) -> str:
    """The exit-status epilog every command's ``--help`` ends with, in one wording.

    Parameters
    ----------
    bad_input : str
        What counts as bad input for this command (exit 2).
    cannot_write : str
        What exits 1 (an output that cannot be written, ...).

    Returns
    -------
    str
    """
    return (f"exit status: 0 on success; 2 on bad input ({bad_input}), with a one-line 'error:' on stderr; "
            f"1 {cannot_write}.")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help only where it says something.

    Not to a required flag, a flag without a default (``None``) or a switch
    (``False``), and not when the help already names its default in words
    (``default: the largest fitted budget``), so that no help contradicts
    itself (issue 32).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or action.required or "default" in text
                or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))):
            return text
        return f"{text} (default: %(default)s)"


def positive_float(text: str) -> float:
    """Parse a finite number > 0 (argparse ``type``): budgets, seconds.

    Parameters
    ----------
    text : str

    Returns
    -------
    float

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not such a number.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """Parse a share strictly between 0 and 1 (argparse ``type``): the split's parts.

    Parameters
    ----------
    text : str

    Returns
    -------
    float

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is not a number in (0, 1).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def _new_parser(program: str, description: str, epilog: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=program, description=description, epilog=epilog,
                                   formatter_class=HelpFormatter)


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--data``, ``--allow-pickle``, ``--quality-range``, ``--models``, ``--ignore-columns``, ``--throughput``."""
    parser.add_argument("--data", type=Path, required=required, default=None, metavar="PATH",
                        help="long-format table (.parquet/.csv/.csv.gz or a Parquet folder; one row per query and "
                             "model) or RouterBench's wide file"
                             + ("" if required else "; default: the built-in synthetic benchmark"))
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a .pkl --data file (unpickling runs any code it holds: trusted files only); "
                             "default: refuse it")
    parser.add_argument("--quality-range", type=quality_range, default=(0.0, 1.0), metavar="LO,HI",
                        help="inclusive range of the quality column (default 0,1; e.g. 0,100 for percent)")
    parser.add_argument("--models", type=model_names, default=None, metavar="A,B,C",
                        help="comma-separated model pool; default: every model of the table, sorted by mean cost")
    parser.add_argument("--ignore-columns", type=ignored_columns, default=[], metavar="A,B",
                        help="read the table without these per-query columns (comma-separated among prompt, task, "
                             "subtask), as traffic logs without task labels; a router fitted without a column is "
                             "served without it (the estimator derives prompt clusters in place of tasks); "
                             "default: none, every column is read")
    parser.add_argument("--throughput", type=Path, default=None, metavar="PATH",
                        help="models.csv-style table with ttft_s and output_tokens_per_s per model, to derive latency "
                             "from output_tokens when the data has no latency_s column; default: none")


def add_estimator_argument(parser: argparse.ArgumentParser, *, default: str, why: str) -> None:
    """``--estimator``: the learned families everywhere, and ``simulated`` where the protocol allows it."""
    kinds = ESTIMATOR_KINDS if default != "simulated" else ("simulated", *ESTIMATOR_KINDS)
    simulated = "'simulated': the paper's noisy-oracle estimates (--noise), for comparison only; " \
        if "simulated" in kinds else ""
    parser.add_argument("--estimator", choices=kinds, default=default, metavar="KIND",
                        help=f"quality estimator family, one of {', '.join(kinds)}: {simulated}'learned' (LightGBM; "
                             "one regressor for all models when the logs are partial), 'pooled' (one LightGBM for "
                             "all models), 'linear' (ridge), or a peer router's quality model: 'knn' and 'mlp' "
                             "(RouterBench), 'task-mean' (mean quality per task), 'mf' (RouteLLM's matrix "
                             f"factorisation); default: {default} ({why})")


def add_split_arguments(parser: argparse.ArgumentParser, *, calibration: float, why: str) -> None:
    """``--train-fraction``, ``--calibration-fraction`` (the test part is the rest) and ``--seed``."""
    parser.add_argument("--train-fraction", type=fraction, default=0.5, metavar="F",
                        help="share of the queries the learned estimators train on")
    parser.add_argument("--calibration-fraction", type=fraction, default=calibration, metavar="F",
                        help=f"share of the queries the policies are fitted on (the test part is the rest); {why}")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="SEED",
                        help="seed of the split (and of the synthetic data, the estimate noise, the bootstrap)")


def add_policy_arguments(parser: argparse.ArgumentParser, *, max_depth: int, why: str) -> None:
    """``--max-depth``, ``--per-step``, ``--min-fully-logged``: how policies are fitted, in both fitting commands."""
    parser.add_argument("--max-depth", type=positive_int, default=max_depth, metavar="D",
                        help=f"most models cascade routing runs per query; {why}")
    parser.add_argument("--per-step", action="store_true",
                        help="also search a separate λ per step (slower, usually a little better); default: one λ")
    parser.add_argument("--min-fully-logged", type=positive_int, default=MIN_FULLY_LOGGED, metavar="N",
                        help="partial logs: fit policies on the calibration queries logged for every model when "
                             "there are at least N of them, else on every calibration query with the estimator's "
                             "prediction for each outcome not logged (the direct method)")


def add_budget_arguments(parser: argparse.ArgumentParser, *, fitting: bool, latency: bool = True) -> None:
    """``--budget`` and (with ``latency``) ``--latency-budget``.

    The budgets to fit (several), or the fitted policy to use.
    """
    if fitting:
        parser.add_argument("--budget", type=positive_float, nargs="+", default=None, metavar="USD",
                            help="mean cost per query to fit a policy for (several allowed); default: three budgets "
                                 "spread over the single models' cost range")
        parser.add_argument("--latency-budget", type=positive_float, nargs="+", default=None, metavar="SECONDS",
                            help="mean latency per query to fit policies for, crossed with --budget: one policy per "
                                 "(budget, latency budget) pair; needs latency in the data (a latency_s column, or "
                                 "--throughput); default: none")
    else:
        parser.add_argument("--budget", type=positive_float, default=None, metavar="USD",
                            help="use the fitted policy with the largest budget not above USD (mean cost per "
                                 "query); default: the largest fitted budget")
        if not latency:
            return
        parser.add_argument("--latency-budget", type=positive_float, default=None, metavar="SECONDS",
                            help="with --budget, use the largest fitted (budget, latency budget) pair within both; "
                                 "the artifact must have been fitted with latency budgets; default: a policy "
                                 "fitted without one")


def add_artifact_argument(parser: argparse.ArgumentParser) -> None:
    """``--artifact``: the router a command loads (a pickle: trusted artifacts only)."""
    parser.add_argument("--artifact", type=Path, required=True, metavar="PATH",
                        help="router.joblib written by python -m training.fit (its manifest beside it); a pickle: "
                             "load only artifacts you trust (--verify-key)")


def add_quiet_argument(parser: argparse.ArgumentParser, what: str = "hide the progress bars") -> None:
    """``--quiet``, in every command."""
    parser.add_argument("--quiet", action="store_true", help=what)


#: Exit codes of ``python -m training.fit``, listed in its ``--help``.
FIT_EXIT_STATUS = exit_status("bad argument, missing or malformed data, a budget below the cheapest policy",
                              "if an output (--out, --report) cannot be written")
#: Exit codes of ``python -m training.evaluate``, listed in its ``--help``.
EVALUATE_EXIT_STATUS = exit_status("bad argument, missing or malformed data",
                                   "if an output (--json, --plot) cannot be written")


def fit_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.fit`` (built without heavy imports, so ``--help`` is fast).

    Returns
    -------
    argparse.ArgumentParser
    """
    from estimators.prompts import PROMPT_CHARS  # numpy only

    parser = _new_parser(
        "python -m training.fit",
        "Train estimators, fit routing/cascading policies to cost budgets, evaluate them on held-out queries "
        "and save a router artifact. --data is a long-format table with one row per (query, model) and the "
        f"columns {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}; see the README's "
        "input schema), or RouterBench's wide file. Only the last "
        f"{PROMPT_CHARS:,} characters of each prompt are featurized.", FIT_EXIT_STATUS)
    add_data_arguments(parser, required=False)
    parser.add_argument("--n-queries", type=positive_int, default=3000, metavar="N",
                        help="size of the synthetic benchmark when there is no --data")
    parser.add_argument("--prices", type=Path, default=None, metavar="PATH",
                        help="models.csv-style price table (USD per 1M input/output tokens) for the cost estimator; "
                             "default: learn cost from prompts")
    add_budget_arguments(parser, fitting=True)
    parser.add_argument("--allow-over-budget", action="store_true",
                        help="fit a budget below the cheapest policy's cost anyway (the cheapest policy, reported as "
                             "over budget) instead of stopping with exit 2")
    parser.add_argument("--strategy", choices=FIT_STRATEGIES, default="cascade_routing", help="decision strategy")
    add_policy_arguments(parser, max_depth=3, why="3 bounds a served query's latency and spend at three calls; "
                                                  "python -m training.evaluate defaults to 5, the paper's protocol")
    add_estimator_argument(parser, default="learned", why="a saved router needs estimators it can run on new "
                                                          "queries; the simulated ones read the true outcomes")
    add_split_arguments(parser, calibration=0.25,
                        why="it sets how precisely the budget is met on new traffic (the mean cost of a policy that "
                            "sometimes calls a 10x dearer model is noisy on a few hundred queries)")
    parser.add_argument("--fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "CALIBRATION", "TEST"),
                        help=argparse.SUPPRESS)  # deprecated alias of --train-fraction/--calibration-fraction
    parser.add_argument("--split-column", action="store_true",
                        help="take each query's part from the table's split column (train, calibration or test; test "
                             "queries must be logged for every model) instead of the seeded, stratified split")
    parser.add_argument("--curve-points", type=positive_int, default=4, metavar="N",
                        help="budgets per hull segment for the quality-cost curve and its AUC")
    parser.add_argument("--out", type=Path, default=Path("router.joblib"), metavar="PATH",
                        help="artifact path; the manifest is written beside it")
    parser.add_argument("--report", type=Path, default=Path("report"), metavar="DIR",
                        help="directory for report.json and quality_cost.png")
    parser.add_argument("--sign-key-env", default=None, metavar="NAME",
                        help="sign the artifact (Ed25519 over its manifest, which holds the payload's sha256) with the "
                             "private key whose PEM is in environment variable NAME (python -m training.keygen makes "
                             "a pair), so that loaders given the public key (--verify-key) refuse a changed artifact "
                             "before unpickling it; a non-PEM secret signs with the deprecated HMAC; default: unsigned")
    parser.add_argument("--skip-memory-check", action="store_true",
                        help="fit even when the data's estimated peak memory exceeds the memory available now (see "
                             "'Fitting memory' in the README); default: stop with advice before fitting")
    add_quiet_argument(parser)
    return parser


def evaluate_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.evaluate`` (built without heavy imports).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _new_parser(
        "python -m training.evaluate",
        "Compare routing, the threshold cascade, the optimal cascade and cascade routing on a benchmark table "
        "with the paper's protocol: a seeded calibration/test split, simulated estimates recalibrated on the "
        "calibration split only, budgets along the single models' hull, AUC x100 on the test split with paired "
        "bootstrap intervals.", EVALUATE_EXIT_STATUS)
    add_data_arguments(parser, required=True)
    from estimators.simulated import NOISE_LEVELS  # numpy only

    parser.add_argument("--noise", choices=tuple(NOISE_LEVELS), default="low",
                        help="noise level of the simulated quality and cost estimates")
    add_estimator_argument(parser, default="simulated", why="the paper's protocol, so that its AUCs compare with "
                                                            "the paper's; python -m training.fit defaults to learned")
    add_split_arguments(parser, calibration=0.05,
                        why="the paper's 0.05 suits ~36k queries; use ~0.3 for a few thousand, and with learned "
                            "estimators (python -m training.fit uses 0.25)")
    add_policy_arguments(parser, max_depth=5, why="5 is the paper's protocol (ALGORITHM.md §6), so that the AUCs "
                                                  "compare with the paper's, where python -m training.fit saves "
                                                  "routers with 3; the threshold and optimal cascades may run every "
                                                  "model")
    parser.add_argument("--latency-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="also fit every policy to this mean latency per query (needs latency in the data, or "
                             "--throughput); the threshold cascade, which has no multiplier for it, is left out; "
                             "default: none")
    parser.add_argument("--bootstrap", type=positive_int, default=500, metavar="N",
                        help="bootstrap resamples of the test queries")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the full report (AUCs, intervals, curves) as JSON; default: none")
    parser.add_argument("--plot", type=Path, default=None, metavar="PATH",
                        help="draw the quality-cost curves and the single models (needs matplotlib); default: none")
    add_quiet_argument(parser)
    parser.add_argument("--logged", metavar="DIR", default=None,
                        help="instead of all the above: off-policy estimates of --artifact on a training.serve "
                             "--log-dir (python -m training.evaluate --logged DIR --help); default: none")
    return parser


# --------------------------------------------------------------------------- #
# the other command lines' parsers, here so that their --help loads nothing heavy either
# --------------------------------------------------------------------------- #

#: Exit codes of ``python -m training.score``, listed in its ``--help``.
SCORE_EXIT_STATUS = (
    "exit status: 0 on success (with a 'warning:' line on stderr, naming the top reasons, when rows were "
    "rejected); 2 on bad input (bad argument, missing or unreadable file, missing columns, a budget below "
    "every fitted policy, an output that is an input or exists without --overwrite, an interrupted run "
    "without --resume, an input changed while it was read), with a one-line 'error:' on stderr; 2 also "
    "when rows were rejected and none scored, or more than --max-reject-share (the results and the rejects "
    "are written first); 1 if an output cannot be written or a worker process died; 130 after Ctrl-C and "
    "143 after SIGTERM (completed batches are kept for --resume).")


def score_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.score`` (``training.serving.batch.parse_args`` adds its cross-checks).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _new_parser(
        "python -m training.score",
        "Score traffic with a fitted router: first model, plan and ex-ante estimates per query, "
        "or (logged input with a 'model' column) a full cascade replay with realised cost and quality.",
        SCORE_EXIT_STATUS)
    add_artifact_argument(parser)
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="Parquet or CSV (.csv, .csv.gz) file: one row per query, or the long format with "
                             "logged outcomes (the rows of a query contiguous: memory stays bounded by the batch)")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="Parquet file for the decisions (with --engine spark: a dataset directory or URI)")
    add_budget_arguments(parser, fitting=False)
    parser.add_argument("--batch-size", type=positive_int, default=65536, metavar="ROWS",
                        help="input rows scored per batch (the file itself is read a few MB at a time)")
    parser.add_argument("--rejects", default=None, metavar="PATH",
                        help="Parquet file for rejected rows; default: OUTPUT with suffix .rejects.parquet")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="processes scoring batches in parallel, each loading the router; 1 = in this "
                             "process with multi-threaded kernels (compiled at start, a few seconds); "
                             f"default: one process per core (up to {MAX_AUTO_WORKERS}) from "
                             f"{AUTO_WORKERS_FROM_ROWS:,} input rows, below that this process with "
                             "single-threaded kernels")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run recorded in OUTPUT.partial/ from its last completed "
                             "batch (same input, artifact, budget and batch size); the result is the rows of an "
                             "uninterrupted run")
    parser.add_argument("--engine", choices=("local", "spark"), default="local",
                        help="'spark': read --input (a Parquet file or directory) and write --output and the "
                             "rejects as Parquet datasets through Spark (pip install \"cascade-router[spark]\"); "
                             "--batch-size, --workers and --resume are then Spark's business")
    parser.add_argument("--grouped", action="store_true",
                        help="with --engine spark: the rows of each query stand together in the input (as "
                             "--engine local requires), so Spark scores each split where it is read, without "
                             "shuffling every row by query_id; only the queries at the splits' edges are "
                             "regrouped. A task that finds a query's rows apart fails, naming it; drop --grouped "
                             "then (default: shuffle)")
    parser.add_argument("--master", default=None, metavar="URL",
                        help="Spark master with --engine spark (e.g. local[2]); default: what spark-submit or "
                             "the Spark defaults say")
    add_verify_arguments(parser)
    parser.add_argument("--max-reject-share", type=float, default=None, metavar="SHARE",
                        help="exit 2 (after writing the results and the rejects) when more than this share of the "
                             "input rows is rejected, e.g. 0.01; whatever it is, a run that rejects rows and scores "
                             "nothing exits 2; default: no limit")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output and rejects file (each replaced only when the run has "
                             "completed); without it an existing one is refused (exit 2), never overwritten")
    add_quiet_argument(parser)
    return parser


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``training.serve``'s options of the traffic log and exploration (``training.serving.traffic`` reads them)."""
    group = parser.add_argument_group("traffic log and exploration (issue 34)")
    group.add_argument("--log-dir", type=Path, default=None, metavar="DIR",
                       help="log every answered request, one row per model called, in the long format training.fit "
                            "reads (Parquet files, written atomically off the request path), and accept labels at "
                            "POST /v1/feedback")
    group.add_argument("--log-max-bytes", type=positive_int, default=10 << 30, metavar="BYTES",
                       help="disk use of the log files past which new rows are counted (router_log_rows), not "
                            "written; nothing is ever deleted")
    group.add_argument("--log-file-rows", type=positive_int, default=10_000, metavar="ROWS",
                       help="rows per log file")
    group.add_argument("--log-file-seconds", type=float, default=60.0, metavar="SECONDS",
                       help="a log file is written once its oldest row is this old")
    group.add_argument("--explore", type=float, default=0.0, metavar="EPSILON",
                       help="probability that a paced request also calls uniformly drawn models the policy did "
                            "not call (after answering), logged with its propensity; needs --pace and --log-dir "
                            "(0: never)")
    group.add_argument("--baseline-model", default=None, metavar="NAME",
                       help="the all-frontier baseline whose cost per request (its prices at the request's tokens) "
                            "and the saving go to /metrics and the log; default the model with the highest prices")
    group.add_argument("--explore-models", type=positive_int, default=1, metavar="M",
                       help="models an exploring request draws; off-line evaluation of a candidate sees every "
                            "path that leaves the logging cascade at up to M models (the cascade depth: all)")


def add_shadow_arguments(parser: argparse.ArgumentParser) -> None:
    """``training.serve``'s options of the shadow router (``training.serving.shadow``)."""
    group = parser.add_argument_group("shadow router (issue 34)")
    group.add_argument("--shadow", type=Path, default=None, metavar="ARTIFACT",
                       help="a second router artifact (the same models; verified like --artifact) whose decisions "
                            "are replayed on each served cascade's answers, never calling a model, and compared "
                            "(router_shadow_* in /metrics; shadow_* columns in the --log-dir rows); its quality "
                            "and cost: training.evaluate --logged DIR --artifact ARTIFACT")
    group.add_argument("--shadow-budget", type=float, default=None, metavar="USD",
                       help="the shadow's budget (its largest fitted budget not above it); default each request's "
                            "served budget")


def logged_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.evaluate --logged`` (``training.offpolicy.main``).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _new_parser(
        "python -m training.evaluate --logged",
        "Off-policy estimates (IPS and doubly robust, with intervals) of a candidate artifact's mean "
        "quality and cost on the traffic a training.serve --log-dir logged, from the logs alone.",
        exit_status("bad argument, unreadable logs or artifact", "if --json cannot be written"))
    parser.add_argument("--logged", type=Path, required=True, metavar="DIR", help="the service's --log-dir")
    add_artifact_argument(parser)
    add_budget_arguments(parser, fitting=False, latency=False)
    parser.add_argument("--labels", type=Path, default=None, metavar="PATH",
                        help="your labels (.parquet or .csv: query_id = the request id, quality, optionally "
                             "model); joined over the /v1/feedback labels; default: those only")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the estimates here; default: none")
    add_verify_arguments(parser)
    return parser


def synthetic_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.synthetic``.

    Returns
    -------
    argparse.ArgumentParser
    """
    from .synthetic_models import SYNTHETIC_MODELS

    parser = _new_parser(
        "python -m training.synthetic",
        "Write the built-in synthetic benchmark (the default data of python -m training.fit) as a "
        "long-format table: one row per query and model with query_id, task, subtask, split, "
        "prompt, model, quality, cost_usd, input_tokens, output_tokens, latency_s, response. "
        "Made up: never report results on it as results about real models.",
        exit_status("bad argument, --out exists", "if --out cannot be written"))
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="the table to write; .parquet, .csv or .csv.gz by its name")
    parser.add_argument("--n-queries", type=positive_int, default=4000, metavar="N",
                        help="number of queries, each with a row per model")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="SEED",
                        help="seed of every random choice; another seed gives other queries")
    names = ", ".join(m.name for m in SYNTHETIC_MODELS)
    parser.add_argument("--models", type=model_names, default=None, metavar="A,B,C",
                        help="comma-separated models to keep, e.g. all but one to play a new model's arrival "
                             f"(default: all {len(SYNTHETIC_MODELS)}: {names})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def data_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m training.data`` (one command so far: ``append``).

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _new_parser(
        "python -m training.data",
        "Tables in the long format (one row per query and model). 'append' adds the rows of "
        "the later tables to the first (e.g. a new model's rows to the logs) and writes a new "
        "file: same columns required, a CSV header read as a header, the result validated as "
        "one table (no (query, model) pair twice), inputs never overwritten, the output written "
        "atomically.",
        exit_status("bad argument, missing or malformed table", "if --out cannot be written"))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    append = commands.add_parser("append", help="append tables into a new file", formatter_class=HelpFormatter,
                                 description="Append long-format tables into a new file (--out).",
                                 epilog=parser.epilog)
    append.add_argument("tables", type=Path, nargs="+", metavar="PATH",
                        help="two or more tables (.parquet/.csv/.csv.gz or a Parquet folder), in order")
    append.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="the appended table; .parquet, .csv or .csv.gz by its name")
    append.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    append.add_argument("--quality-range", type=quality_range, default=(0.0, 1.0), metavar="LO,HI",
                        help="inclusive range of the quality column (default 0,1; e.g. 0,100 for percent)")
    append.add_argument("--allow-pickle", action="store_true",
                        help="read .pkl tables (unpickling runs any code they hold: trusted files only)")
    return parser
