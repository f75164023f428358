"""``python -m training.keygen PRIVATE PUBLIC``: a new Ed25519 key pair for signing router artifacts.

The private key (PKCS#8 PEM, readable by its owner only) signs:
``export ROUTER_SIGNING_KEY="$(cat PRIVATE)"`` and ``training.fit
--sign-key-env ROUTER_SIGNING_KEY``. The public key (PEM) verifies:
``--verify-key PUBLIC`` for ``training.score`` and ``training.serve``, or
``key=`` for :func:`training.artifact.load_artifact`. Keep the private key
where only the training job can read it; the public key may be anywhere
the artifact's writer cannot change. Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import BAD_INPUT, HelpFormatter, fail, parse_or_exit_code

__all__ = ["main"]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.keygen", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter,
                                     epilog="exit status: 0 on success; 2 on bad input (bad argument, a key file "
                                            "that exists or cannot be created), with a one-line 'error:' on stderr.")
    parser.add_argument("private", type=Path, help="file for the private key (created with mode 0600)")
    parser.add_argument("public", type=Path, help="file for the public key")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write a new key pair; exit code 2 (one ``error:`` line) if a file exists or cannot be created.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name.

    Returns
    -------
    int
    """
    args = parse_or_exit_code(_parse, argv)
    if isinstance(args, int):
        return args
    from .artifact import new_key_pair  # joblib, NumPy, cryptography: not for --help

    private, public = new_key_pair()
    written = []
    try:
        for path, text, mode in ((args.private, private, 0o600), (args.public, public, 0o644)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never replaces a file
            written.append(path)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(text)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        return fail(f"cannot write {error.filename} ({error.strerror}); give new file names in a writable "
                    "directory (existing files are never overwritten)", code=BAD_INPUT)
    print(f"wrote private key {args.private} (sign: training.fit --sign-key-env NAME with its text in NAME) and "
          f"public key {args.public} (verify: --verify-key {args.public})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
