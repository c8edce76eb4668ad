"""Turn what users hand us into Arrow tables that fit a table's schema.

Accepted inputs: pandas / polars DataFrames (and polars LazyFrames), pyarrow Tables,
RecordBatches and RecordBatchReaders, a list of dicts, a dict of columns, or a 2-D
NumPy array of vectors. Vectors may be any numeric list type (float16 included);
they are cast to the table's ``fixed_size_list<float32, dim>`` and checked for
NaN/inf, nulls and ragged lengths. A vector column may also be strings holding JSON
arrays of numbers (``"[0.1, 0.2]"``), as CSV files and JSON exports carry them.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ArgumentTypeError, DimensionError, InvalidVectorError, SchemaError

__all__ = ["to_arrow_table", "vector_type", "to_vector_array", "refuse_non_finite", "infer_schema", "conform",
           "vectors_view", "check_valid_arrow"]


def vector_type(dim: int) -> pa.DataType:
    """The Arrow type of a vector column of ``dim`` components."""
    return pa.list_(pa.float32(), dim)


def _numpy_vectors_to_arrow(array: np.ndarray, what: str) -> pa.FixedSizeListArray:
    if array.ndim != 2:
        raise InvalidVectorError(f"{what} must be a 2-D array (rows x dim), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise InvalidVectorError(f"{what} must be numeric, got dtype {array.dtype}")
    flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), array.shape[1])


def to_arrow_table(data: Any, vector_column: str = "vector") -> pa.Table:
    """Convert any supported input to a ``pa.Table`` (no schema checks yet)."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, np.ndarray):
        return pa.table({vector_column: _numpy_vectors_to_arrow(data, "a NumPy array of vectors")})
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "columns"):
        frame = data.copy(deep=False)
        for name in frame.columns:  # pandas object columns of ndarrays convert fine; 2-D blocks do not
            if frame[name].dtype == object and len(frame) and isinstance(frame[name].iloc[0], np.ndarray):
                frame[name] = [np.asarray(v) for v in frame[name]]
        try:
            return pa.Table.from_pandas(frame, preserve_index=False)
        except OverflowError:
            raise _too_large({str(name): frame[name].tolist() for name in frame.columns}) from None
        except UnicodeEncodeError as exc:
            raise SchemaError(f"the DataFrame holds text that is not valid Unicode: {exc}") from None
    if module == "polars":
        if hasattr(data, "collect") and not hasattr(data, "to_arrow"):
            data = data.collect()
        return data.to_arrow()
    if isinstance(data, dict):
        columns = {}
        for name, values in data.items():
            if isinstance(values, np.ndarray) and values.ndim == 2:
                columns[name] = _numpy_vectors_to_arrow(values, f"column {name!r}")
            else:
                columns[name] = values
        try:
            return pa.table(columns)
        except OverflowError:
            raise _too_large(columns) from None
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SchemaError(f"cannot build a table from the dict of columns: {exc}") from exc
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise SchemaError("no rows given (empty list)")
        if all(isinstance(row, dict) for row in data):
            try:
                return pa.Table.from_pylist(list(data))
            except OverflowError:
                keys = dict.fromkeys(key for row in data for key in row)
                raise _too_large({key: [row.get(key) for row in data] for key in keys}) from None
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise SchemaError(f"cannot build a table from the list of dicts: {exc}") from exc
        try:
            array = np.asarray(data)
        except ValueError as exc:
            raise InvalidVectorError(f"vectors are ragged (rows of different lengths): {exc}") from exc
        if array.dtype == object:
            raise InvalidVectorError("vectors are ragged or non-numeric")
        return to_arrow_table(array, vector_column)
    raise ArgumentTypeError(
        f"cannot add data of type {type(data).__name__}: give a pandas/polars DataFrame, "
        "a pyarrow Table/RecordBatch/RecordBatchReader, a list of dicts, a dict of "
        "columns or a 2-D NumPy array")


def _too_large(columns: dict[str, Any]) -> SchemaError:
    """The error for data holding an integer beyond 64 bits, naming the first such column."""
    for name, values in columns.items():
        try:
            pa.array(values)
        except OverflowError:
            return SchemaError(f"column {name!r} holds an integer too large for 64 bits")
        except Exception:  # another problem, reported once this one is fixed
            continue
    return SchemaError("the data holds an integer too large for 64 bits")


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def to_vector_array(column: pa.ChunkedArray | pa.Array, dim: int | None, name: str, *,
                    check_finite: bool = True) -> pa.FixedSizeListArray:
    """Validate a vector column and cast it to ``fixed_size_list<float32, dim>``.

    The column holds lists of numbers, or strings of JSON arrays of numbers
    (``"[0.1, 0.2]"``); a string that is not one raises :class:`InvalidVectorError`
    naming the row and showing the string. ``check_finite=False`` leaves NaN and
    infinity to the caller (:func:`refuse_non_finite`).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _parse_vector_strings(column, name)
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise InvalidVectorError(f"vector column {name!r} must hold lists of numbers, got {kind}")
    value_type = kind.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type) or pa.types.is_null(value_type)):
        raise InvalidVectorError(f"vector column {name!r} must hold numbers, got lists of {value_type}")
    if column.null_count:
        row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise InvalidVectorError(f"vector column {name!r} has a null vector at row {row}")
    if len(column) == 0:
        if dim is None:
            raise SchemaError(f"cannot infer the dimension of {name!r} from zero rows; pass dim=")
        return pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), dim)
    if pa.types.is_fixed_size_list(kind):
        lengths = np.full(len(column), kind.list_size)
        values = column.flatten()
    else:
        lengths = np.asarray(pc.list_value_length(column))
        values = column.flatten()
    expected = int(lengths[0]) if dim is None else dim
    if expected <= 0:
        raise DimensionError(f"vector column {name!r}: vectors must have at least one component")
    wrong = np.flatnonzero(lengths != expected)
    if wrong.size:
        row = int(wrong[0])
        if dim is None:
            raise InvalidVectorError(
                f"vector column {name!r} is ragged: row 0 has {expected} components, "
                f"row {row} has {int(lengths[row])}")
        raise DimensionError(
            f"vector column {name!r}: row {row} has {int(lengths[row])} components, "
            f"the table's dimension is {dim}")
    if values.null_count:
        bad = int(np.flatnonzero(np.asarray(values.is_null()))[0]) // expected
        raise InvalidVectorError(f"vector column {name!r}: row {bad} contains a null component")
    floats = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    if check_finite:
        # A NaN or infinity makes the sum non-finite (so can an overflowing sum: then look closer).
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(floats)
        if not math.isfinite(total) and not np.isfinite(floats).all():
            row = int(np.flatnonzero(~np.isfinite(floats))[0]) // expected
            raise _non_finite(name, row)
    return pa.FixedSizeListArray.from_arrays(pa.array(floats), expected)


def refuse_non_finite(vectors: np.ndarray, norms: np.ndarray, name: str) -> None:
    """Raise :class:`InvalidVectorError` naming the first row of ``vectors`` with a NaN or infinity.

    ``norms`` are the rows' L2 norms, computed anyway for search: a NaN or infinite
    component makes its row's norm non-finite, so only those rows are looked at
    (a norm can also overflow from finite components; such rows pass).
    """
    suspects = np.flatnonzero(~np.isfinite(norms))
    if suspects.size:
        bad = ~np.isfinite(vectors[suspects]).all(axis=1)
        if bad.any():
            raise _non_finite(name, int(suspects[np.argmax(bad)]))


def _non_finite(name: str, row: int) -> InvalidVectorError:
    return InvalidVectorError(f"vector column {name!r}: row {row} contains NaN or infinity")


def _parse_vector_strings(column: pa.Array, name: str) -> pa.Array:
    """Strings of JSON arrays of numbers -> ``list<float32>`` (vectorised, no per-row Python).

    Nulls stay nulls (reported by the caller). The slow per-row path runs only to
    name the first bad row when the fast parse fails.
    """
    text = pc.utf8_trim_whitespace(column)
    bracketed = pc.and_(pc.starts_with(text, "["), pc.ends_with(text, "]"))
    if not pc.all(pc.fill_null(bracketed, True)).as_py():
        _raise_bad_vector_string(column, name)
    inner = pc.utf8_slice_codeunits(text, 1, -1)
    parts = pc.split_pattern(inner, ",")
    try:
        values = pc.utf8_trim_whitespace(parts.flatten()).cast(pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        _raise_bad_vector_string(column, name)
    offsets = parts.offsets
    if parts.offset:  # a sliced input: rebase the offsets onto the flattened values
        offsets = pc.subtract(offsets, offsets[0])
    return pa.ListArray.from_arrays(offsets, values, mask=parts.is_null())


def _raise_bad_vector_string(column: pa.Array, name: str) -> None:
    """Find the first string that is not a JSON array of numbers and say so."""
    for row, text in enumerate(column.to_pylist()):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not (isinstance(value, list) and value
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise InvalidVectorError(
                f"vector column {name!r}: row {row} is not a JSON array of numbers: {shown!r}")
    raise InvalidVectorError(f"vector column {name!r}: strings are not JSON arrays of numbers")


def infer_schema(table: pa.Table, *, id_column: str, vector_column: str, dim: int | None) -> tuple[pa.Schema, bool]:
    """Schema of a new table made from ``table``: (schema, ids_assigned_by_omendb)."""
    check_valid_arrow(table)
    table = _decode_dictionaries(table)
    if vector_column not in table.column_names:
        raise SchemaError(
            f"no vector column {vector_column!r} in the data (columns: {', '.join(table.column_names)}); "
            "pass vector_column= to name it")
    vectors = to_vector_array(table.column(vector_column), dim, vector_column)
    fields = []
    auto_ids = id_column not in table.column_names
    if auto_ids:
        fields.append(pa.field(id_column, pa.int64(), nullable=False))
    for field in table.schema:
        if field.name == vector_column:
            fields.append(pa.field(vector_column, vectors.type, nullable=False))
        elif field.name == id_column:
            fields.append(pa.field(id_column, _id_type(field.type, id_column), nullable=False))
        elif field.name.startswith("_"):
            raise SchemaError(f"column {field.name!r}: names starting with '_' are reserved for omendb")
        else:
            fields.append(field.with_metadata(None))
    return pa.schema(fields), auto_ids


def _id_type(kind: pa.DataType, name: str) -> pa.DataType:
    if pa.types.is_integer(kind):
        return pa.int64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.string()
    raise SchemaError(f"primary key column {name!r} must be integers or strings, got {kind}")


def conform(table: pa.Table, schema: pa.Schema, *, id_column: str, vector_column: str,
            next_id: int, require_ids: bool = False, check_finite: bool = True) -> pa.Table:
    """Make ``table`` fit ``schema`` exactly, assigning ids when absent.

    Raises a :class:`SchemaError` naming the column on unknown columns, a missing
    vector column, or values that cannot be cast safely to the column's type.
    ``check_finite``: see :func:`to_vector_array`.
    """
    check_valid_arrow(table)
    table = _decode_dictionaries(table)
    unknown = [name for name in table.column_names if name not in schema.names]
    if unknown:
        raise SchemaError(f"unknown column(s) {', '.join(map(repr, unknown))}; "
                          f"the table has {', '.join(schema.names)}")
    if len(set(table.column_names)) != len(table.column_names):
        raise SchemaError(f"duplicate column names in the data: {table.column_names}")
    if vector_column not in table.column_names:
        raise SchemaError(f"missing vector column {vector_column!r}")
    dim = schema.field(vector_column).type.list_size
    columns = []
    for field in schema:
        if field.name == vector_column:
            columns.append(to_vector_array(table.column(vector_column), dim, vector_column,
                                           check_finite=check_finite))
        elif field.name == id_column and id_column not in table.column_names:
            if require_ids:
                raise SchemaError(f"missing primary key column {id_column!r} (upsert needs it)")
            columns.append(_assign_ids(field.type, table.num_rows, next_id))
        elif field.name not in table.column_names:
            if not field.nullable:
                raise SchemaError(f"missing column {field.name!r}")
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            columns.append(_cast_column(table.column(field.name), field))
    return pa.Table.from_arrays(columns, schema=schema)


def _assign_ids(kind: pa.DataType, rows: int, next_id: int) -> pa.Array:
    if pa.types.is_integer(kind):
        return pa.array(np.arange(next_id, next_id + rows, dtype=np.int64))
    return pa.array([uuid.uuid4().hex for _ in range(rows)], pa.string())


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)


def _same_kind(given: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether values of ``given`` may be stored in a column of ``wanted``: the same kind of
    value (numbers widening within integers or into floats, text, bytes, times, nested
    types of such), never a change of meaning such as ``5`` -> ``"5"`` or ``"123"`` -> ``123``."""
    t = pa.types
    if given == wanted or t.is_null(given):
        return True
    if t.is_integer(wanted):
        return t.is_integer(given)
    if t.is_floating(wanted):
        return t.is_integer(given) or t.is_floating(given)
    if t.is_decimal(wanted):
        return t.is_integer(given) or t.is_decimal(given)
    for family in (_is_text, _is_bytes, t.is_boolean, t.is_date, t.is_time, t.is_duration):
        if family(wanted):
            return family(given)
    if t.is_timestamp(wanted):
        return t.is_timestamp(given) and given.tz == wanted.tz
    listy = (t.is_list, t.is_large_list, t.is_fixed_size_list)
    if any(f(wanted) for f in listy):
        return any(f(given) for f in listy) and _same_kind(given.value_type, wanted.value_type)
    if t.is_struct(wanted):
        return (t.is_struct(given) and [f.name for f in given] == [f.name for f in wanted]
                and all(_same_kind(g.type, w.type) for g, w in zip(given, wanted)))
    if t.is_map(wanted):
        return t.is_map(given) and _same_kind(given.key_type, wanted.key_type) and \
            _same_kind(given.item_type, wanted.item_type)
    return False


def check_valid_arrow(table: pa.Table) -> None:
    """Refuse Arrow data that breaks Arrow's own rules (invalid UTF-8 in a string column,
    offsets out of bounds, ...) with a :class:`SchemaError` naming the column and row:
    stored, such data could never be read back."""
    try:
        table.validate(full=True)
        return
    except (pa.ArrowInvalid, pa.ArrowException):
        pass
    for name in table.column_names:
        column = table.column(name)
        start = 0
        for chunk in column.chunks:
            try:
                chunk.validate(full=True)
            except (pa.ArrowInvalid, pa.ArrowException) as exc:
                row = _first_bad_text_row(chunk)
                if row is not None:
                    raise SchemaError(f"column {name!r}: row {start + row} is not valid UTF-8 text") from None
                raise SchemaError(f"column {name!r} holds malformed Arrow data: {str(exc).splitlines()[0]}") from None
            start += len(chunk)
    raise SchemaError("the data is malformed Arrow data")


def _first_bad_text_row(chunk: pa.Array) -> int | None:
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        return None
    try:
        raw = chunk.view(pa.binary() if pa.types.is_string(chunk.type) else pa.large_binary())
        raw.validate(full=True)  # the offsets are sound: only the text is not
        values = raw.to_pylist()
    except (pa.ArrowInvalid, pa.ArrowException):
        return None
    for row, value in enumerate(values):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return row
    return None


def _cast_column(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    if column.type != field.type:
        if not _same_kind(column.type, field.type):
            raise SchemaError(f"column {field.name!r} is {field.type}; the data gives {column.type}, which "
                              "omendb does not convert (convert the values first if that is what you mean)")
        if pa.types.is_null(column.type):
            column = pa.chunked_array([pa.nulls(len(column), field.type)])
        else:
            given = column
            try:
                column = column.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SchemaError(
                    f"column {field.name!r} should be {field.type}, got {column.type} "
                    f"that cannot be converted: {exc}") from exc
            if pa.types.is_floating(field.type):
                _refuse_overflow(given, column, field)
    if not field.nullable and column.null_count:
        raise SchemaError(f"column {field.name!r} contains nulls")
    return column


def _refuse_overflow(given: pa.ChunkedArray, stored: pa.ChunkedArray, field: pa.Field) -> None:
    """A finite value that became infinite in a narrower float column is out of range
    (rounding to the column's precision is what a float32 column means; overflow is not)."""
    overflow = pc.and_(pc.is_inf(stored), pc.invert(pc.is_inf(given.cast(pa.float64()))))
    if pc.any(overflow).as_py():
        row = int(np.flatnonzero(np.asarray(overflow.combine_chunks().fill_null(False)))[0])
        raise SchemaError(f"column {field.name!r}: row {row} holds {given[row].as_py()!r}, out of range for "
                          f"{field.type}")


def vectors_view(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """Zero-copy (N, dim) float32 view of a validated vector column (one chunk)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 0:
            return np.zeros((0, dim), dtype=np.float32)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    values = column.values
    start = column.offset * dim
    flat = np.frombuffer(values.buffers()[1], dtype=np.float32,
                         count=(values.offset + len(values)), offset=0)[values.offset:]
    return flat[start:start + len(column) * dim].reshape(len(column), dim)
