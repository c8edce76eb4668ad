"""Opening a table's log after a crash: what to replay, what is damage, and salvage.

The rules (``formats/wal.md``, "Torn tail or damage"; ``formats/manifest.md``,
"Missing versions"):

* WAL file names are the seq of their first record, and records are consecutive
  across files, so a file that ends early or a record missing between files is seen.
* Only the last record of the newest file can be a torn tail; everything else that
  does not verify is damage to acknowledged writes, and the table is not opened.
* The newest manifest's ``wal_seq`` and the first WAL file's name must meet: a gap
  means the manifest version that published the records in it is missing, and
  opening would silently roll back acknowledged writes.

Nothing here removes or changes a file when it reports damage. :func:`salvage_log`
is the documented way out: it keeps every record that still verifies.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptFileError, MissingFileError, MissingVersionError, SchemaError, WalDamageError, storage_error
from ..storage.fileio import fsync_dir
from ..storage.manifest import Manifest, ManifestStore
from ..storage.wal import RecordKind, WalRecord, first_seq_of
from ..storage.wal_read import read_wal, scan_wal
from ..storage.layout import MANIFESTS, SALVAGE, SEGMENTS, WAL, deletions_version, is_omendb_segment_file

__all__ = ["log_files", "read_log", "check_no_missing_versions", "salvage_log", "SalvagedLog",
           "referenced_files", "remove_orphans", "latest_manifest", "latest_complete_manifest"]

def log_files(wal_dir: Path) -> list[Path]:
    """The table's WAL files in seq order (files without a numbered name are not omendb's)."""
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return []
    return sorted(wal_dir / n for n in names if first_seq_of(n) is not None and not n.startswith("."))


def check_no_missing_versions(table_dir: Path, manifest: Manifest, wal_files: list[Path], *,
                              salvage_hint: str) -> None:
    """Raise :class:`MissingVersionError` when a newer manifest than ``manifest`` must have existed."""
    store = ManifestStore(table_dir / MANIFESTS)
    newest = store.path_of(manifest.version)
    if wal_files:
        first = first_seq_of(wal_files[0])
        if first is not None and first > manifest.wal_seq + 1:
            raise MissingVersionError(
                f"{table_dir}: manifest version(s) after v{manifest.version} are missing: the newest manifest "
                f"({newest.name}) covers log records up to seq {manifest.wal_seq}, but the log now starts at seq "
                f"{first}, so records {manifest.wal_seq + 1}..{first - 1} were published by a version that is gone "
                f"(v{manifest.version + 1} or later). Opening would roll back acknowledged writes, so the table is "
                f"not opened and no file was changed. Restore the missing file(s) in {newest.parent}, or accept "
                f"the rollback to v{manifest.version} with {salvage_hint}")
    try:
        names = os.listdir(table_dir / SEGMENTS)
    except FileNotFoundError:
        return
    # A deletion file is named for the version that published it; a crashed flush can leave one
    # of the next version only.
    later = sorted(v for v in map(deletions_version, names) if v is not None)
    if later and later[-1] > manifest.version + 1:
        raise MissingVersionError(
            f"{table_dir}: manifest version v{later[-1]} is missing: {SEGMENTS}/ holds a deletion file it "
            f"published, but the newest manifest is v{manifest.version} ({newest.name}). Opening would roll "
            f"back acknowledged deletes, so the table is not opened and no file was changed. Restore the "
            f"missing file(s) in {newest.parent}, or accept the rollback with {salvage_hint}")


def read_log(wal_files: list[Path], manifest: Manifest, *, salvage_hint: str) -> list[WalRecord]:
    """Every logged record past ``manifest.wal_seq``, in order; a torn tail of the newest
    file is cut off. Raises :class:`WalDamageError` on any other damage."""
    records: list[WalRecord] = []
    for i, path in enumerate(wal_files):
        last = i == len(wal_files) - 1
        first = first_seq_of(path)
        next_first = None if last else first_seq_of(wal_files[i + 1])
        if next_first is not None and next_first <= manifest.wal_seq + 1:
            continue  # every record in it is in the segments already (a removal a crash cut short)
        found = list(read_wal(path, last=last, expected_first=first, salvage_hint=salvage_hint))
        end = found[-1].seq if found else first - 1
        if next_first is not None and end + 1 != next_first:
            raise WalDamageError(
                f"{path}: the file ends after record seq {end}, but the next file starts at seq {next_first}: "
                f"records {end + 1}..{next_first - 1} are missing (acknowledged writes; the file was cut short). "
                f"The table is not opened and no file was changed ({salvage_hint})")
        records.extend(r for r in found if r.seq > manifest.wal_seq)
    return records


@dataclass
class SalvagedLog:
    """What :func:`salvage_log` kept and what it could not."""

    records: list[WalRecord]             # to replay, in order (after a loss, adds become upserts)
    folder: Path                         # where the original files were copied
    lost: list[str] = field(default_factory=list)  # what could not be kept, one line each

    @property
    def rows_kept(self) -> int:
        return sum(r.payload.num_rows for r in self.records if r.kind is not RecordKind.DELETE)


def salvage_log(table_dir: Path, manifest: Manifest) -> SalvagedLog:
    """Collect every verifiable record past ``manifest`` from the table's WAL files.

    First copies every WAL file, and moves every segment-folder file no manifest
    references, into ``salvage/<UTC time>/`` (evidence for later). A record that follows
    a loss (damage, a gap, a missing version) is replayed with upsert semantics, so the
    newest logged state of every key it touches wins; keys changed only in lost records
    keep their state of ``manifest``.
    """
    wal_dir = table_dir / WAL
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    folder = table_dir / SALVAGE / stamp
    files = log_files(wal_dir)
    try:
        (folder / WAL).mkdir(parents=True)
        for path in files:
            shutil.copy2(path, folder / WAL / path.name)
    except OSError as exc:  # (a full disk): nothing was changed yet; leave no half copy behind
        shutil.rmtree(folder, ignore_errors=True)
        raise storage_error(exc, "copying the log aside before salvaging it", folder) from None
    referenced = referenced_files(table_dir)
    seg_dir = table_dir / SEGMENTS
    moved = [n for n in (os.listdir(seg_dir) if seg_dir.is_dir() else [])
             if is_omendb_segment_file(n) and not n.startswith(".") and n not in referenced]
    if moved:
        (folder / SEGMENTS).mkdir()
        for name in moved:
            os.rename(seg_dir / name, folder / SEGMENTS / name)
        fsync_dir(seg_dir)
    fsync_dir(folder / WAL)
    lost: list[str] = []
    by_seq: dict[int, WalRecord] = {}
    for i, path in enumerate(files):
        scan = scan_wal(path, last=i == len(files) - 1, expected_first=first_seq_of(path))
        for record in scan.records + (scan.later or []):
            by_seq.setdefault(record.seq, record)
        if scan.problem is not None and not scan.problem.torn:
            lost.append(scan.describe())
    expected = manifest.wal_seq + 1
    first = first_seq_of(files[0]) if files else None
    kept: list[WalRecord] = []
    broken = False
    if first is not None and first > expected:
        lost.append(f"log records {expected}..{first - 1} were published by a missing manifest version; the "
                    f"files that version referenced are in {folder / SEGMENTS}")
        expected, broken = first, True
    if moved:
        lost.append(f"{len(moved)} unreferenced file(s) moved from {SEGMENTS}/ to {folder / SEGMENTS}")
    for seq in sorted(s for s in by_seq if s > manifest.wal_seq):
        record = by_seq[seq]
        if seq < expected:
            continue
        if seq != expected:
            lost.append(f"log records {expected}..{seq - 1} are missing (in damaged bytes)")
            broken = True
        if broken and record.kind is RecordKind.ADD:
            record = WalRecord(record.seq, RecordKind.UPSERT, record.payload, record.size)
        kept.append(record)
        expected = seq + 1
    return SalvagedLog(kept, folder, lost)


def referenced_files(table_dir: Path) -> set[str]:
    """Segment-folder files any retained manifest version references."""
    store = ManifestStore(table_dir / MANIFESTS)
    referenced: set[str] = set()
    for version in store.versions():
        for entry in store.load(version).segments:
            referenced.update(entry.files())
    return referenced


def remove_orphans(table_dir: Path) -> None:
    """Delete what an interrupted flush, build or merge left: files omendb names, that no
    manifest references, and temporary files of its own. Any other file is left alone.
    With an older manifest unreadable nothing is removed: what it references is unknown."""
    try:
        referenced = referenced_files(table_dir)
    except CorruptFileError as exc:
        warnings.warn(f"omendb: {exc}; unreferenced files are kept until it is removed or restored",
                      RuntimeWarning, stacklevel=3)
        return
    seg_dir = table_dir / SEGMENTS
    seg_dir.mkdir(exist_ok=True)
    for name in os.listdir(seg_dir):
        if name not in referenced and is_omendb_segment_file(name):
            (seg_dir / name).unlink(missing_ok=True)
    for directory, temp in ((table_dir / MANIFESTS, _MANIFEST_TEMP), (table_dir / WAL, _WAL_TEMP)):
        for name in os.listdir(directory):
            if temp.fullmatch(name):
                (directory / name).unlink(missing_ok=True)


_MANIFEST_TEMP = re.compile(r"\.v\d{10}\.json\.tmp-\d+")
_WAL_TEMP = re.compile(r"\.\d{20}\.wal\.tmp")


def latest_manifest(name: str, directory: Path) -> Manifest:
    """A table's newest manifest; a damaged one is refused, saying what the user can do."""
    try:
        manifest = ManifestStore(directory / MANIFESTS).latest()
    except MissingFileError:
        raise
    except CorruptFileError as exc:
        raise CorruptFileError(
            f"{exc}. It is table {name!r}'s newest version: restore the file from a backup, or move it out of "
            f"{directory / MANIFESTS} to open the table at the version before it (the writes that version "
            "published are then lost; `omendb salvage` keeps those still in the log)") from None
    if manifest is None:
        raise SchemaError(f"{directory}: table {name!r} has no manifest")
    return manifest


def latest_complete_manifest(name: str, directory: Path) -> Manifest:
    """A reader's newest manifest, refused when a newer one must have existed.

    The log is listed before the manifests: a writer publishes a version before it
    removes the log files it covers, so a reader never sees a gap that is not there.
    A second look settles a publish that raced with the first.
    """
    hint = f"`omendb salvage --db {directory.parent} --table {name}` (in the writer's place)"
    for attempt in (1, 2):
        wal_files = log_files(directory / WAL)
        manifest = latest_manifest(name, directory)
        try:
            check_no_missing_versions(directory, manifest, wal_files, salvage_hint=hint)
            return manifest
        except MissingVersionError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
