"""Unit tests of the storage layer: WAL, segments, deletion files, manifests."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import omendb

from conftest import run_python
from omendb.errors import CorruptFileError, FormatVersionError, OmenError, WalDamageError
from omendb.storage import fileio
from omendb.storage import segment as segment_module
from omendb.storage.deletions import read_deletions, write_deletions
from omendb.storage.manifest import Manifest, ManifestStore, SegmentEntry
from omendb.storage.segment import open_segment, write_segment
from omendb.storage.wal import WRITE_PIECE, RecordKind, WalWriter, _pieces, encode_table
from omendb.storage.wal_read import read_wal

WAL_HEADER = 16
RECORD_HEADER = 24


def _rows(start: int, n: int, dim: int = 4) -> pa.Table:
    vectors = np.arange(start * dim, (start + n) * dim, dtype=np.float32)
    return pa.table({
        "id": pa.array(np.arange(start, start + n), pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors), dim),
        "tag": pa.array([f"row{i}" for i in range(start, start + n)]),
    })


def _write_wal(path: Path, tables: list[pa.Table], kinds: list[RecordKind] | None = None,
               first_seq: int = 1) -> list[int]:
    """Write one record per table; return the byte offset at which each record starts."""
    kinds = kinds or [RecordKind.ADD] * len(tables)
    writer = WalWriter(path)
    offsets = []
    for i, (table, kind) in enumerate(zip(tables, kinds)):
        offsets.append(path.stat().st_size)
        writer.append(first_seq + i, kind, encode_table(table))
    writer.close()
    return offsets


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# =========================================================================== WAL
class TestWal:
    def test_round_trip_preserves_seq_kind_and_payload(self, tmp_path: Path) -> None:
        path = tmp_path / "00000000000000000001.wal"
        tables = [_rows(0, 3), _rows(3, 5), pa.table({"id": pa.array([1, 4], pa.int64())})]
        kinds = [RecordKind.ADD, RecordKind.UPSERT, RecordKind.DELETE]
        _write_wal(path, tables, kinds, first_seq=7)
        records = list(read_wal(path))
        assert [r.seq for r in records] == [7, 8, 9]
        assert [r.kind for r in records] == kinds
        for record, table in zip(records, tables):
            assert record.payload.equals(table)

    def test_payload_is_exactly_the_arrow_ipc_stream(self) -> None:
        table = _rows(0, 5)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write(table)
        payload = encode_table(table)
        assert payload.to_bytes() == sink.getvalue().to_pybytes()
        assert len(payload) == sink.getvalue().size

    def test_record_of_more_buffers_than_one_pwritev_takes(self, tmp_path: Path) -> None:
        wide = pa.table({f"c{i}": pa.array([i, None, i + 1], pa.int64()) for i in range(400)})
        assert len(encode_table(wide).parts) > 1024  # Linux's IOV_MAX
        _write_wal(tmp_path / "w.wal", [wide, _rows(0, 2)])
        first, second = read_wal(tmp_path / "w.wal")
        assert first.payload.equals(wide) and second.payload.equals(_rows(0, 2))

    def test_short_writes_are_resumed(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        real_pwritev = os.pwritev

        def at_most_100_bytes(fd, buffers, offset):  # what a signal or a full disk can do to pwritev
            budget, taken = 100, []
            for buffer in buffers:
                piece = memoryview(buffer)[:budget]
                taken.append(piece)
                budget -= len(piece)
                if not budget:
                    break
            return real_pwritev(fd, taken, offset)

        monkeypatch.setattr(os, "pwritev", at_most_100_bytes)
        _write_wal(tmp_path / "w.wal", [_rows(0, 50), _rows(50, 3)])
        monkeypatch.undo()
        assert [r.payload.equals(t) for r, t in zip(read_wal(tmp_path / "w.wal"), [_rows(0, 50), _rows(50, 3)])] \
            == [True, True]

    def test_empty_wal_has_no_records(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        WalWriter(path).close()
        assert path.stat().st_size == WAL_HEADER
        assert list(read_wal(path)) == []

    def test_reopened_writer_appends_after_existing_records(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 2)], first_seq=1)
        writer = WalWriter(path)
        writer.append(2, RecordKind.ADD, encode_table(_rows(2, 2)))
        writer.close()
        records = list(read_wal(path))
        assert [r.seq for r in records] == [1, 2]
        assert records[1].payload.equals(_rows(2, 2))

    def test_payload_is_written_in_pieces_of_the_given_size(self) -> None:
        payload = encode_table(_rows(0, 300, dim=64))
        pieces = list(_pieces(payload.parts, 1000))
        sizes = [sum(len(part) for part in piece) for piece in pieces]
        assert len(pieces) > 1 and all(size == 1000 for size in sizes[:-1]) and 0 < sizes[-1] <= 1000
        assert b"".join(bytes(part) for piece in pieces for part in piece) == payload.to_bytes()

    def test_a_pending_record_is_not_a_record_until_finished(self, tmp_path: Path) -> None:
        path, crashed = tmp_path / "w.wal", tmp_path / "crashed.wal"
        writer = WalWriter(path)
        writer.append(1, RecordKind.ADD, encode_table(_rows(0, 2)))
        end_of_first = path.stat().st_size
        big = _rows(2, 3 * WRITE_PIECE // (64 * 4), dim=64)  # several write pieces
        assert encode_table(big).size > 2 * WRITE_PIECE
        pending = writer.begin(2, RecordKind.ADD, encode_table(big))
        crashed.write_bytes(path.read_bytes())  # what a crash before finish() leaves: payload, no header
        assert crashed.stat().st_size > end_of_first
        assert [r.seq for r in read_wal(crashed)] == [1]
        assert crashed.stat().st_size == end_of_first  # the torn tail is cut
        pending.finish()
        writer.sync_data()
        writer.close()
        records = list(read_wal(path))
        assert [r.seq for r in records] == [1, 2] and records[1].payload.equals(big)

    def test_an_abandoned_record_leaves_no_trace(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        writer = WalWriter(path)
        writer.append(1, RecordKind.ADD, encode_table(_rows(0, 2)))
        end_of_first = path.stat().st_size
        writer.begin(2, RecordKind.ADD, encode_table(_rows(2, 500))).abandon()
        assert path.stat().st_size == end_of_first
        writer.append(2, RecordKind.ADD, encode_table(_rows(2, 3)))
        writer.close()
        records = list(read_wal(path))
        assert [r.seq for r in records] == [1, 2] and records[1].payload.equals(_rows(2, 3))

    def test_one_record_pending_at_a_time(self, tmp_path: Path) -> None:
        writer = WalWriter(tmp_path / "w.wal")
        pending = writer.begin(1, RecordKind.ADD, encode_table(_rows(0, 2)))
        with pytest.raises(RuntimeError, match="already pending"):
            writer.begin(2, RecordKind.ADD, encode_table(_rows(2, 2)))
        pending.finish()
        writer.close()
        assert [r.seq for r in read_wal(tmp_path / "w.wal")] == [1]

    def test_unsynced_writes_are_still_readable(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        writer = WalWriter(path, fsync=False)
        writer.append(1, RecordKind.ADD, encode_table(_rows(0, 2)))
        writer.append(2, RecordKind.ADD, encode_table(_rows(2, 2)), fsync=True)
        writer.sync()
        writer.close()
        assert [r.seq for r in read_wal(path)] == [1, 2]

    @pytest.mark.parametrize("cut", ["one_byte", "half_payload", "inside_header", "only_magic"])
    def test_torn_tail_is_cut_and_earlier_records_survive(self, tmp_path: Path, cut: str) -> None:
        path = tmp_path / "w.wal"
        offsets = _write_wal(path, [_rows(0, 3), _rows(3, 3), _rows(6, 3)])
        size = path.stat().st_size
        last = offsets[-1]
        keep = {
            "one_byte": size - 1,
            "half_payload": last + RECORD_HEADER + (size - last - RECORD_HEADER) // 2,
            "inside_header": last + 10,
            "only_magic": last + 4,
        }[cut]
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        with pytest.warns(RuntimeWarning, match="torn last record"):  # a power loss, not a killed process
            records = list(read_wal(path))
        assert [r.seq for r in records] == [1, 2]
        assert records[1].payload.equals(_rows(3, 3))
        # the torn bytes are gone, so appending continues a clean log
        assert path.stat().st_size == last
        writer = WalWriter(path)
        writer.append(3, RecordKind.ADD, encode_table(_rows(100, 1)))
        writer.close()
        assert [r.seq for r in read_wal(path)] == [1, 2, 3]

    @pytest.mark.parametrize("garbage", [b"\x00" * 7, b"\x00" * 24 + b"payload, header never written",
                                         b"WREC\x01\x01"])
    def test_what_a_crash_leaves_after_the_last_record_is_cut(self, tmp_path: Path, garbage: bytes) -> None:
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 3), _rows(3, 3)])
        good_size = path.stat().st_size
        with open(path, "ab") as handle:
            handle.write(garbage)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            records = list(read_wal(path))
        assert [r.seq for r in records] == [1, 2]
        assert records[0].payload.equals(_rows(0, 3))
        assert path.stat().st_size == good_size

    @pytest.mark.parametrize("garbage", [b"\xde\xad\xbe\xef" * 40, b"WREC" + b"\x01" * 60,
                                         b"WREC\x01\x00\x00\x00" + struct.pack("<QII", 3, 8, 0) + b"12345678"])
    def test_bytes_no_crash_leaves_after_the_last_record_are_damage(self, tmp_path: Path, garbage: bytes) -> None:
        # A record header is written last, in one write: a crash leaves zeros there, never
        # other bytes. Bytes that verify as nothing are damage, reported and kept.
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 3), _rows(3, 3)])
        with open(path, "ab") as handle:
            handle.write(garbage)
        before = path.read_bytes()
        with pytest.raises(WalDamageError, match="w.wal"):
            list(read_wal(path))
        assert path.read_bytes() == before

    @pytest.mark.parametrize("where", ["payload", "seq_field", "length_field", "crc_field", "kind_field"])
    def test_damage_to_the_last_acknowledged_record_is_reported_not_cut(self, tmp_path: Path, where: str) -> None:
        path = tmp_path / "00000000000000000001.wal"
        offsets = _write_wal(path, [_rows(0, 3), _rows(3, 3), _rows(6, 3)])
        last = offsets[-1]
        offset = {"payload": last + RECORD_HEADER + 200, "seq_field": last + 9, "length_field": last + 17,
                  "crc_field": last + 21, "kind_field": last + 4}[where]
        _flip_byte(path, offset)
        before = path.read_bytes()
        with pytest.raises(WalDamageError, match=path.name) as info:
            list(read_wal(path))
        assert str(last) in str(info.value) and "seq 3" in str(info.value)
        assert path.read_bytes() == before

    def test_a_sector_the_disk_never_wrote_is_a_torn_tail(self, tmp_path: Path) -> None:
        # What a power loss can leave of an unsynced record: its header reached the disk,
        # one sector of its payload did not (and reads as zeros).
        path = tmp_path / "w.wal"
        offsets = _write_wal(path, [_rows(0, 3), _rows(3, 40, dim=64)])
        last = offsets[-1]
        data = bytearray(path.read_bytes())
        sector = (last // 512 + 2) * 512
        assert sector + 512 <= len(data)
        data[sector:sector + 512] = bytes(512)
        path.write_bytes(bytes(data))
        with pytest.warns(RuntimeWarning, match="torn last record"):
            records = list(read_wal(path))
        assert [r.seq for r in records] == [1]
        assert path.stat().st_size == last

    def test_records_must_be_consecutive(self, tmp_path: Path) -> None:
        path = tmp_path / "00000000000000000001.wal"
        writer = WalWriter(path)
        writer.append(1, RecordKind.ADD, encode_table(_rows(0, 2)))
        writer.append(3, RecordKind.ADD, encode_table(_rows(2, 2)))  # seq 2 is missing
        writer.close()
        with pytest.raises(WalDamageError, match="seq 3 where 2 was expected"):
            list(read_wal(path, expected_first=1))
        with pytest.raises(WalDamageError, match="seq 1 where 5 was expected"):
            list(read_wal(path, expected_first=5))  # the name promises records from 5 on

    def test_a_new_log_file_appears_complete_or_not_at_all(self, tmp_path: Path) -> None:
        path = tmp_path / "00000000000000000001.wal"
        WalWriter(path).close()
        assert path.stat().st_size == WAL_HEADER
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def test_repair_false_leaves_the_file_alone(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 3), _rows(3, 3)])
        with open(path, "ab") as handle:
            handle.write(b"torn!")
        size = path.stat().st_size
        assert [r.seq for r in read_wal(path, repair=False)] == [1, 2]
        assert path.stat().st_size == size

    @pytest.mark.parametrize("size", [0, 5, 10])
    def test_file_shorter_than_its_header_is_damage(self, tmp_path: Path, size: int) -> None:
        # A log file is created whole (header written and synced under a temporary name,
        # then renamed), so a short one was truncated: its records may have been acknowledged.
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 3)])
        with open(path, "r+b") as handle:
            handle.truncate(size)
        with pytest.raises(WalDamageError, match="shorter than its header"):
            list(read_wal(path))
        assert path.stat().st_size == size

    @pytest.mark.parametrize("where", ["payload", "seq_field", "magic", "crc_field"])
    def test_corrupt_record_followed_by_valid_records_raises(self, tmp_path: Path, where: str) -> None:
        path = tmp_path / "00000000000000000001.wal"
        offsets = _write_wal(path, [_rows(0, 3), _rows(3, 3), _rows(6, 3)])
        middle = offsets[1]
        offset = {"payload": middle + RECORD_HEADER + 30, "seq_field": middle + 8,
                  "magic": middle + 1, "crc_field": middle + 21}[where]
        _flip_byte(path, offset)
        before = path.read_bytes()
        with pytest.raises(CorruptFileError, match=path.name) as info:
            list(read_wal(path))
        assert str(middle) in str(info.value)  # names the byte offset of the bad record
        assert path.read_bytes() == before  # corruption is reported, never "repaired" away

    def test_corrupt_length_of_middle_record_is_not_mistaken_for_a_torn_tail(self, tmp_path: Path) -> None:
        # The length field of record 2 of 3 is damaged so that it points past the end of
        # the file. Record 3 is intact and was acknowledged: the reader must report
        # corruption rather than silently truncate the log (losing record 3).
        path = tmp_path / "00000000000000000001.wal"
        offsets = _write_wal(path, [_rows(0, 3), _rows(3, 3), _rows(6, 3)])
        middle = offsets[1]
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, middle + 16, 1 << 30)
        path.write_bytes(bytes(data))
        size = path.stat().st_size
        with pytest.raises(CorruptFileError, match=path.name):
            list(read_wal(path))
        assert path.stat().st_size == size

    def test_unknown_format_version_raises(self, tmp_path: Path) -> None:
        path = tmp_path / "00000000000000000001.wal"
        _write_wal(path, [_rows(0, 2)])
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, 8, 99)
        struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[:12])))
        path.write_bytes(bytes(data))
        with pytest.raises(FormatVersionError, match=path.name) as info:
            list(read_wal(path))
        assert "99" in str(info.value)

    def test_bad_file_header_raises(self, tmp_path: Path) -> None:
        path = tmp_path / "w.wal"
        _write_wal(path, [_rows(0, 2)])
        _flip_byte(path, 2)
        with pytest.raises(WalDamageError, match="w.wal"):
            list(read_wal(path))


# ====================================================================== segments
class TestWriteBack:
    def test_bulk_write_back_yields_to_log_commits_for_at_most_its_own_disk_time(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        disk_time = 0.02  # per chunk, simulated: the test does not depend on this machine's disk

        def slow_disk(fd, offset, nbytes, flags):
            time.sleep(disk_time)
            return 0

        monkeypatch.setattr(fileio, "_SYNC_FILE_RANGE", slow_disk)
        monkeypatch.setattr(fileio, "LOG_COMMIT_WAIT", 30.0)  # so that only the bound applies
        chunks = 10

        def write_back(patient=None) -> float:
            started = time.monotonic()
            fileio.write_back_gradually(-1, chunks * fileio.WRITEBACK_CHUNK, patient=patient)
            return time.monotonic() - started

        alone = write_back()
        with fileio.log_commit_in_progress():  # a commit that never ends
            yielding = write_back()
            in_a_hurry = write_back(patient=lambda: False)  # e.g. the next memtable is filling up
        assert yielding >= 1.8 * chunks * disk_time  # it waited for the commit between chunks
        assert yielding < 10 * chunks * disk_time  # but never much longer than its disk time again
        assert alone < yielding
        assert in_a_hurry < 1.5 * chunks * disk_time  # no waiting at all

    @pytest.mark.parametrize("size", [0, 1, 4 << 20, (9 << 20) + 5])
    def test_remove_gradually_deletes_the_file(self, tmp_path: Path, size: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "big.wal"
        path.write_bytes(b"x" * size)
        sizes = []
        real_truncate = os.truncate
        monkeypatch.setattr(os, "truncate", lambda p, n: (sizes.append(n), real_truncate(p, n)))
        fileio.remove_gradually(path)
        assert not path.exists()
        assert sizes == sorted(sizes, reverse=True) and all(size - n <= (i + 1) * fileio.REMOVE_STEP
                                                            for i, n in enumerate(sizes))
        fileio.remove_gradually(path)  # already gone: fine

    def test_log_commits_never_wait_for_each_other(self) -> None:
        entered = threading.Event()

        def second_commit() -> None:
            with fileio.log_commit_in_progress():
                entered.set()

        with fileio.log_commit_in_progress():
            other = threading.Thread(target=second_commit)
            other.start()
            assert entered.wait(5), "a log commit waited for another one"
        other.join()

    def test_durable_writes_mark_their_log_commit_and_unsynced_ones_do_not(self, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        from omendb.table import writer

        taken = []
        real_turn = writer.log_commit_in_progress

        def counting_turn():
            taken.append(1)
            return real_turn()

        monkeypatch.setattr(writer, "log_commit_in_progress", counting_turn)
        with omendb.open(tmp_path / "db", build_indexes=False) as db:
            tbl = db.create_table("t", dim=4)
            tbl.add(np.ones((3, 4), np.float32))
            tbl.add(np.ones((2, 4), np.float32), fsync=False)
            tbl.delete([0])
            assert len(taken) == 2 and tbl.count() == 4


class TestSegment:
    def test_write_then_open_round_trip(self, tmp_path: Path) -> None:
        table = _rows(0, 50)
        info = write_segment(tmp_path, "seg-1.arrow", table)
        path = tmp_path / "seg-1.arrow"
        assert info.file == "seg-1.arrow"
        assert info.rows == 50
        assert info.bytes == path.stat().st_size
        assert info.crc32 == zlib.crc32(path.read_bytes())
        assert os.listdir(tmp_path) == ["seg-1.arrow"]  # no temp file left behind
        opened = open_segment(path, rows=info.rows, size=info.bytes, crc32=info.crc32)
        assert opened.select(table.column_names).cast(table.schema).equals(table)
        assert opened.column("vector").num_chunks == 1  # one contiguous buffer

    def test_multi_chunk_input_becomes_one_batch(self, tmp_path: Path) -> None:
        table = pa.concat_tables([_rows(0, 10), _rows(10, 10), _rows(20, 5)])
        assert table.column("id").num_chunks == 3
        info = write_segment(tmp_path, "s.arrow", table)
        opened = open_segment(tmp_path / "s.arrow", rows=25, size=info.bytes, crc32=info.crc32)
        assert opened.column("vector").num_chunks == 1
        assert opened["id"].to_pylist() == list(range(25))

    def test_empty_segment(self, tmp_path: Path) -> None:
        table = _rows(0, 0)
        info = write_segment(tmp_path, "e.arrow", table)
        opened = open_segment(tmp_path / "e.arrow", rows=0, size=info.bytes, crc32=info.crc32)
        assert opened.num_rows == 0
        assert opened.schema.names == table.schema.names

    def test_flipped_byte_fails_checksum_naming_the_file(self, tmp_path: Path) -> None:
        info = write_segment(tmp_path, "seg-x.arrow", _rows(0, 40))
        path = tmp_path / "seg-x.arrow"
        _flip_byte(path, info.bytes // 2)
        with pytest.raises(CorruptFileError, match="seg-x.arrow") as exc:
            open_segment(path, rows=info.rows, size=info.bytes, crc32=info.crc32)
        assert "checksum" in str(exc.value)

    def test_wrong_size_is_refused(self, tmp_path: Path) -> None:
        info = write_segment(tmp_path, "seg-x.arrow", _rows(0, 10))
        path = tmp_path / "seg-x.arrow"
        with pytest.raises(CorruptFileError, match="seg-x.arrow"):
            open_segment(path, rows=info.rows, size=info.bytes + 8, crc32=info.crc32)
        with open(path, "r+b") as handle:
            handle.truncate(info.bytes - 8)
        with pytest.raises(CorruptFileError, match="seg-x.arrow") as exc:
            open_segment(path, rows=info.rows, size=info.bytes, crc32=info.crc32)
        assert str(info.bytes) in str(exc.value)

    def test_wrong_row_count_is_refused(self, tmp_path: Path) -> None:
        info = write_segment(tmp_path, "seg-x.arrow", _rows(0, 10))
        with pytest.raises(CorruptFileError, match="seg-x.arrow"):
            open_segment(tmp_path / "seg-x.arrow", rows=11, size=info.bytes, crc32=info.crc32)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(CorruptFileError, match="gone.arrow"):
            open_segment(tmp_path / "gone.arrow", rows=1, size=10, crc32=None)

    def test_unknown_format_version(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(segment_module, "FORMAT_VERSION", 42)
        info = write_segment(tmp_path, "seg-new.arrow", _rows(0, 5))
        monkeypatch.undo()
        with pytest.raises(FormatVersionError, match="seg-new.arrow") as exc:
            open_segment(tmp_path / "seg-new.arrow", rows=5, size=info.bytes, crc32=info.crc32)
        assert "42" in str(exc.value)

    def test_plain_arrow_file_is_not_a_segment(self, tmp_path: Path) -> None:
        path = tmp_path / "plain.arrow"
        table = _rows(0, 3)
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
        size = path.stat().st_size
        with pytest.raises(CorruptFileError, match="plain.arrow"):
            open_segment(path, rows=3, size=size, crc32=zlib.crc32(path.read_bytes()))

    def test_garbage_file_without_checksum_is_reported_as_corrupt(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.arrow"
        path.write_bytes(b"not arrow at all" * 10)
        with pytest.raises(CorruptFileError, match="junk.arrow"):
            open_segment(path, rows=1, size=160, crc32=None)


# ================================================================ deletion files
class TestDeletions:
    def test_round_trip_sorted_and_unique(self, tmp_path: Path) -> None:
        path = tmp_path / "s.del"
        write_deletions(path, np.array([9, 3, 3, 0, 7]))
        rows = read_deletions(path, segment_rows=10)
        assert rows.dtype == np.uint32
        assert rows.tolist() == [0, 3, 7, 9]

    def test_empty(self, tmp_path: Path) -> None:
        path = tmp_path / "s.del"
        write_deletions(path, np.array([], dtype=np.int64))
        assert read_deletions(path, segment_rows=0).tolist() == []

    @pytest.mark.parametrize("offset", [20, 25, -1, -4])
    def test_flipped_byte_is_corruption(self, tmp_path: Path, offset: int) -> None:
        path = tmp_path / "seg.del"
        write_deletions(path, np.arange(0, 100, 7))
        size = path.stat().st_size
        _flip_byte(path, offset % size)
        with pytest.raises(CorruptFileError, match="seg.del"):
            read_deletions(path, segment_rows=100)

    def test_truncated_file(self, tmp_path: Path) -> None:
        path = tmp_path / "seg.del"
        write_deletions(path, np.arange(10))
        path.write_bytes(path.read_bytes()[:-6])
        with pytest.raises(CorruptFileError, match="seg.del"):
            read_deletions(path, segment_rows=100)

    def test_row_beyond_segment_is_corruption(self, tmp_path: Path) -> None:
        path = tmp_path / "seg.del"
        write_deletions(path, np.array([1, 50]))
        with pytest.raises(CorruptFileError, match="seg.del"):
            read_deletions(path, segment_rows=50)

    def test_unknown_version(self, tmp_path: Path) -> None:
        path = tmp_path / "seg.del"
        write_deletions(path, np.array([1, 2]))
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, 8, 7)
        body = bytes(data[:-4])
        data[-4:] = struct.pack("<I", zlib.crc32(body))
        path.write_bytes(bytes(data))
        with pytest.raises(FormatVersionError, match="seg.del"):
            read_deletions(path, segment_rows=10)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(CorruptFileError, match="nope.del"):
            read_deletions(tmp_path / "nope.del", segment_rows=10)


# ===================================================================== manifests
def _manifest(version: int = 1, **changes) -> Manifest:
    base = Manifest(version=version, table={"dim": 4, "metric": "l2"}, created_at=123.5, change="create")
    return Manifest(**{**base.__dict__, **changes})


class TestManifest:
    def test_publish_load_latest(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path / "manifests")
        assert store.versions() == []
        assert store.latest() is None
        first = _manifest(1)
        store.publish(first)
        seg = SegmentEntry("seg-a.arrow", rows=10, bytes=1234, crc32=99, deleted=2, deletions_file="seg-a.del")
        second = first.evolve(segments=(seg,), wal_seq=17, next_id=10, change="flush")
        assert second.version == 2
        store.publish(second)
        assert store.versions() == [1, 2]
        assert store.load(1) == first
        assert store.latest() == second
        assert store.latest().segments[0] == seg
        assert sorted(os.listdir(tmp_path / "manifests")) == ["v0000000001.json", "v0000000002.json"]

    def test_versions_ignore_unrelated_and_temp_files(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(3))
        (tmp_path / ".v0000000004.json.tmp-1").write_text("{")
        (tmp_path / "notes.txt").write_text("x")
        assert store.versions() == [3]
        assert store.latest().version == 3

    def test_refuses_to_overwrite_a_version(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(1, wal_seq=5))
        before = store.path_of(1).read_bytes()
        with pytest.raises(OmenError, match="already exists"):
            store.publish(_manifest(1, wal_seq=6))
        assert store.path_of(1).read_bytes() == before
        assert store.load(1).wal_seq == 5

    def test_checksum_mismatch_names_the_file(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(1, wal_seq=5))
        path = store.path_of(1)
        doc = json.loads(path.read_text())
        doc["body"]["wal_seq"] = 6  # edited without updating the checksum
        path.write_text(json.dumps(doc))
        with pytest.raises(CorruptFileError, match="v0000000001.json") as exc:
            store.load(1)
        assert "checksum" in str(exc.value)
        with pytest.raises(CorruptFileError):
            store.latest()

    def test_unknown_format_version(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(1))
        path = store.path_of(1)
        doc = json.loads(path.read_text())
        doc["format_version"] = 3  # (1 and 2 are read: 2 adds text indexes)
        path.write_text(json.dumps(doc))
        with pytest.raises(FormatVersionError, match="v0000000001.json.*version 3"):
            store.load(1)

    @pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"format": "something else"}',
                                         b'{"format": "omendb.manifest", "format_version": 1}'])
    def test_unparsable_manifest(self, tmp_path: Path, content: bytes) -> None:
        store = ManifestStore(tmp_path)
        store.path_of(1).write_bytes(content)
        with pytest.raises(CorruptFileError, match="v0000000001.json"):
            store.load(1)

    def test_file_holding_another_version(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(1))
        os.rename(store.path_of(1), store.path_of(2))
        with pytest.raises(CorruptFileError, match="v0000000002.json"):
            store.load(2)

    def test_missing_version(self, tmp_path: Path) -> None:
        store = ManifestStore(tmp_path)
        store.publish(_manifest(1))
        with pytest.raises(omendb.VersionNotFoundError, match="v0000000005.json"):
            store.load(5)


# ============================================== damaged files seen through a table
_MAKE_TABLE = """
import os, sys
import numpy as np
import omendb

db = omendb.open(sys.argv[1])
table = db.create_table("t", dim=4)
table.add({"id": np.arange(30), "vector": np.arange(120, dtype=np.float32).reshape(30, 4)})
if sys.argv[2] == "flush":
    table.flush()
    table.delete([1, 2])
    table.flush()
for b in range(int(sys.argv[3])):
    ids = 100 + 5 * b + np.arange(5)
    table.add({"id": ids, "vector": np.full((5, 4), float(b), np.float32)})
os._exit(0)  # no close(): the last batches stay in the WAL only
"""


def _make_table(path: Path, *, flush: bool, wal_batches: int = 0) -> None:
    """Table ``t``: 30 rows (in a segment, 2 deleted, if ``flush``), then WAL-only batches of 5."""
    run_python(_MAKE_TABLE, path, "flush" if flush else "no", wal_batches)


class TestDamagedTableFiles:
    def test_damaged_segment_is_reported_on_use(self, tmp_path: Path) -> None:
        import omendb

        db_path = tmp_path / "db"
        _make_table(db_path, flush=True)
        (segment,) = (db_path / "t" / "segments").glob("*.arrow")
        _flip_byte(segment, segment.stat().st_size // 2)
        with omendb.open(db_path) as db:
            table = db.open_table("t")
            with pytest.raises(CorruptFileError, match=segment.name):
                table.search(np.zeros(4), k=3)
            with pytest.raises(CorruptFileError, match=segment.name):
                table.to_arrow()

    def test_damaged_latest_manifest_is_refused_every_time(self, tmp_path: Path) -> None:
        import omendb

        db_path = tmp_path / "db"
        _make_table(db_path, flush=True)
        latest = sorted((db_path / "t" / "manifests").glob("v*.json"))[-1]
        doc = json.loads(latest.read_text())
        doc["body"]["next_id"] += 1
        latest.write_text(json.dumps(doc))
        with omendb.open(db_path) as db:
            for _ in range(2):  # the failed open released its writer lock
                with pytest.raises(CorruptFileError, match=latest.name):
                    db.open_table("t")

    def test_damaged_deletion_file_is_refused(self, tmp_path: Path) -> None:
        import omendb

        db_path = tmp_path / "db"
        _make_table(db_path, flush=True)
        (deletions,) = (db_path / "t" / "segments").glob("*.del")
        _flip_byte(deletions, 21)
        with omendb.open(db_path) as db:
            with pytest.raises(CorruptFileError, match=deletions.name):
                db.open_table("t")

    def test_corrupt_wal_record_is_refused_and_kept(self, tmp_path: Path) -> None:
        import omendb

        db_path = tmp_path / "db"
        _make_table(db_path, flush=True, wal_batches=3)
        (wal,) = (db_path / "t" / "wal").glob("*.wal")
        records = list(read_wal(wal, repair=False))
        assert len(records) == 3
        second = WAL_HEADER + RECORD_HEADER + len(encode_table(records[0].payload))
        _flip_byte(wal, second + RECORD_HEADER + 40)
        damaged = wal.read_bytes()
        with omendb.open(db_path) as db:
            with pytest.raises(CorruptFileError, match=wal.name):
                db.open_table("t")
        assert wal.read_bytes() == damaged  # the evidence (and record 3) is not thrown away

    def test_torn_wal_tail_is_dropped_and_table_keeps_working(self, tmp_path: Path) -> None:
        import omendb

        db_path = tmp_path / "db"
        _make_table(db_path, flush=True, wal_batches=3)
        (wal,) = (db_path / "t" / "wal").glob("*.wal")
        with open(wal, "ab") as handle:
            handle.write(bytes(24) + b"\x07" * 30)  # a record that never finished: payload, no header
        expected = set(range(30)) - {1, 2} | set(range(100, 115))
        with omendb.open(db_path) as db:
            table = db.open_table("t")
            assert set(table.to_arrow()["id"].to_pylist()) == expected
            table.add({"id": [500], "vector": [[1.0, 2.0, 3.0, 4.0]]})
        with omendb.open(db_path) as db:
            table = db.open_table("t")
            assert set(table.to_arrow()["id"].to_pylist()) == expected | {500}
