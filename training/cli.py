"""What the three command lines (``training.fit``, ``training.evaluate``, ``training.score``) share.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from estimators.table import IGNORABLE_COLUMNS

from .artifact import signing_key

__all__ = ["BAD_INPUT", "ignored_columns", "positive_int", "non_negative_int", "CANNOT_WRITE", "INTERRUPTED", "TERMINATED",
           "Interrupted", "OutputError", "RunFailed", "add_verify_arguments", "check_writable", "fail", "refuse_inputs_as_outputs",
           "same_file", "key_from_env", "logs_summary", "quality_range", "parse_or_exit_code", "run_command", "verification_key",
           "writing"]

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
    else:  # a file is written beside its name and renamed into place; missing folders are made in the first existing one
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
    """``--verify-key``, ``--verify-key-env`` and ``--require-signed``, the same for every command that loads an artifact.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    """
    parser.add_argument("--verify-key", type=Path, default=None, metavar="FILE",
                        help="refuse, before unpickling it, an artifact that is unsigned or not signed by the private "
                             "key whose Ed25519 public key (PEM) is in FILE (python -m training.keygen makes the "
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
    """Parse ``--quality-range LO,HI`` (argparse ``type``), so a scale other than [0, 1] can be given on the command line.

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
        If no name is given.
    """
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    return names


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
