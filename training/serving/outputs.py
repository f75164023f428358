"""The two files a scoring run writes, so that nothing a user owns is lost or left half-written.

Why: a scoring job runs for minutes to hours over files users care about.
The decisions and the rejects are written batch by batch into a partial
folder beside the output (``<output>.partial/``: one Parquet part per
batch and file, each written under a temporary name and renamed, then a
``progress.json`` recording the batches done and the totals so far). Only
when the input is exhausted are the parts joined, in order, into a
temporary file in the output's folder, flushed to disk and renamed to the
real name; the partial folder is then removed. So:

* an interrupted run (Ctrl-C, SIGTERM, SIGKILL, a crash) never leaves a
  file under the output's name, and never touches an existing one;
* ``--resume`` continues from the last completed batch, and the joined
  output holds exactly the rows (and row groups) of an uninterrupted run;
* an output or rejects path equal to the input, or to each other, a
  directory, a name of another format (``.csv``), or a place that cannot
  be written is refused before any work.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..cli import same_file, writing
from ..files import write_atomically
from .logged import ScoreError

__all__ = ["OTHER_FORMATS", "PROGRESS", "RunOutputs", "check_paths"]

#: Name endings of other formats, refused for the Parquet outputs (a reader would take them for what they say).
OTHER_FORMATS = (".csv", ".csv.gz", ".tsv", ".txt", ".json", ".jsonl", ".ndjson", ".xlsx", ".feather", ".arrow",
                 ".orc", ".avro", ".pkl", ".joblib")

#: File in the partial folder that records what is done.
PROGRESS = "progress.json"


def check_paths(input_path: Path, output: Path, rejects: Path, rejects_flag: str) -> None:
    """Refuse outputs that would overwrite the input or each other, or that are directories.

    Parameters
    ----------
    input_path, output, rejects : Path
        The input and the two output paths.
    rejects_flag : str
        How the rejects path was given (for the message).

    Raises
    ------
    ScoreError
        Naming the two flags that clash, or the directory.
    """
    for path, flag in ((output, "--output"), (rejects, rejects_flag)):
        if same_file(path, input_path):
            raise ScoreError(f"{flag} {path} is the input file; write the results to another path")
        if path.is_dir():
            raise ScoreError(f"{flag} {path} is a directory; name a Parquet file to write")
        other = next((suffix for suffix in OTHER_FORMATS if path.name.lower().endswith(suffix)), None)
        if other is not None:
            raise ScoreError(f"{flag} {path}: the results are written as Parquet, and a '{other}' name would hide "
                             "that; name it .parquet (read it with pandas.read_parquet, or convert it)")
    if same_file(output, rejects):
        raise ScoreError(f"--output and {rejects_flag} are the same file {output}; give them different paths")


class RunOutputs:
    """The output and rejects files of one run, written through a partial folder (see the module docstring).

    Parameters
    ----------
    output, rejects : Path
        Final paths of the decisions and of the rejected rows.
    schemas : (pyarrow.Schema, pyarrow.Schema)
        Their schemas: every part is written with them, empty ones included.
    run_key : dict
        What must match for a run to be resumed (input file, its size and
        modification time, artifact, budget, batch size): JSON-serialisable.
    resume : bool
        Continue the run recorded in the partial folder instead of refusing it.
    rejects_flag : str
        Option name of the rejects path, for messages.

    Attributes
    ----------
    done : int
        Batches already completed (by an earlier run when resuming).
    totals : dict
        Totals recorded with the last completed batch (empty for a new run).
    """

    def __init__(self, output: Path, rejects: Path, schemas: tuple[pa.Schema, pa.Schema], run_key: dict, *,
                 resume: bool, rejects_flag: str = "--rejects") -> None:
        self.output, self.rejects = output, rejects
        self.schemas = schemas
        self.flags = ("--output", rejects_flag)
        self.partial = output.with_name(output.name + ".partial")
        self.done = 0
        self.totals: dict = {}
        with writing("--output", self.partial):
            if self.partial.exists():
                recorded = self._progress()
                if not resume:
                    raise ScoreError(f"an interrupted run left {self.partial} ({recorded.get('done', 0)} batch(es) "
                                     "done); pass --resume to continue it, or delete that folder to start again")
                if recorded.get("run") != run_key:
                    raise ScoreError(f"--resume: {self.partial} belongs to another run (input, artifact, budget or "
                                     "batch size differ); delete it to start again")
                self.done, self.totals = int(recorded["done"]), dict(recorded["totals"])
                self.discard_unfinished()  # a run killed mid-write (SIGKILL) leaves temporary parts
                self._check_parts()
            else:
                self.partial.mkdir(parents=True)
                self._record(run_key, 0, {})  # proves the folder is writable before any work
            for path, flag in zip((output, rejects), self.flags, strict=True):
                with writing(flag, path):  # the final folders must take a file too
                    path.parent.mkdir(parents=True, exist_ok=True)
                    probe = path.with_name(f".{path.name}.probe")
                    probe.touch()
                    probe.unlink()
        self.run_key = run_key

    def _check_parts(self) -> None:
        """Refuse to resume from parts that are missing or unreadable (a power loss, a hand-edited folder)."""
        for index in range(self.done):
            for which in (0, 1):
                try:
                    pq.read_metadata(self._part(index, which))
                except (OSError, pa.ArrowException) as error:
                    raise ScoreError(f"--resume: part {self._part(index, which).name} of {self.partial} is "
                                     f"missing or damaged ({error}); delete the folder to start again") from error

    def _progress(self) -> dict:
        try:
            return json.loads((self.partial / PROGRESS).read_text())
        except (OSError, ValueError) as error:
            raise ScoreError(f"{self.partial} has no readable {PROGRESS} ({error}); delete the folder to start "
                             "again") from error

    def _record(self, run_key: dict, done: int, totals: dict) -> None:
        write_atomically(self.partial / PROGRESS, json.dumps({"run": run_key, "done": done, "totals": totals}).encode(),
                         durable=False)

    def _part(self, index: int, which: int) -> Path:
        return self.partial / f"part-{index:06d}.{('output', 'rejects')[which]}.parquet"

    def write_batch(self, index: int, scored: pa.Table, rejected: pa.Table, totals: dict) -> None:
        """Store batch ``index`` (scored rows, rejected rows) and the totals after it, each file atomically.

        Parameters
        ----------
        index : int
            Position of the batch in the input (0-based); batches arrive in order.
        scored, rejected : pyarrow.Table
            Rows for the output and for the rejects file (either may be
            empty), in :attr:`schemas`.
        totals : dict
            Running totals after this batch (JSON-serialisable), kept for ``--resume``.
        """
        for which, table in enumerate((scored, rejected)):
            path = self._part(index, which)
            with writing(self.flags[which], path):
                # uncompressed: parts are read once, by finish(), which compresses the joined file; not
                # fsynced (a flush per batch): after a power loss, resuming finds a damaged part and says so
                write_atomically(path, functools.partial(pq.write_table, table, compression="none"), durable=False)
        with writing("--output", self.partial):
            self._record(self.run_key, index + 1, totals)
        self.done = index + 1

    def finish(self) -> None:
        """Join the parts into the final files (temporary name, fsync, rename) and remove the partial folder."""
        for which, final in enumerate((self.output, self.rejects)):
            with writing(self.flags[which], final):
                write_atomically(final, functools.partial(self._join, which))
        shutil.rmtree(self.partial, ignore_errors=True)

    def _join(self, which: int, handle: BinaryIO) -> None:
        """Write the parts of output ``which`` (0 decisions, 1 rejects), in order, as one Parquet file."""
        writer = pq.ParquetWriter(handle, self.schemas[which], compression="zstd")
        try:
            for index in range(self.done):
                part = pq.read_table(self._part(index, which), schema=self.schemas[which])
                if part.num_rows:
                    writer.write_table(part)
        finally:
            writer.close()

    def discard_unfinished(self) -> None:
        """Remove temporary files of a batch that was being written (completed batches stay for ``--resume``)."""
        for temporary in self.partial.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
        for final in (self.output, self.rejects):
            for temporary in final.parent.iterdir():
                if temporary.name.startswith(f".{final.name}.") and temporary.name.endswith(".tmp"):
                    temporary.unlink(missing_ok=True)
