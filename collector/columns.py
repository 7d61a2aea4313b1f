"""Batch rows → validated Arrow tables in the contract's column types (one place for every backend).

Rows arrive as lists in the order of the batch's ``flow_fields`` / ``name_fields``. A column is
converted in one go with pyarrow; only when that fails is it walked value by value to name the
first bad row and field, so a good million-row batch costs a few column conversions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hostflow.records import (
    COLUMNS_MAX_ROWS,
    END_REASONS,
    FLOW_FIELDS,
    FLOW_TYPES,
    INITIATORS,
    NAME_FIELDS,
    NAME_SOURCES,
    NAME_TYPES,
    ColumnsError,
    ContractError,
    Flow,
    Name,
    read_columns_layout,
    to_us,
)

ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
    "UTINYINT": pa.uint8(),
    "USMALLINT": pa.uint16(),
    "UINTEGER": pa.uint32(),
    "UBIGINT": pa.uint64(),
    "VARCHAR[]": pa.list_(pa.string()),
}
INT_LIMITS = {"UTINYINT": 255, "USMALLINT": 65535, "UINTEGER": 2**32 - 1, "UBIGINT": 2**63 - 1}
FLOW_SCHEMA = pa.schema([(k, ARROW_TYPES[t]) for k, t in FLOW_TYPES.items()])
NAME_SCHEMA = pa.schema([(k, ARROW_TYPES[t]) for k, t in NAME_TYPES.items()])

# Fields a row may leave null; they get the record's default.
FLOW_REQUIRED = {"flow_start", "flow_end", "protocol", "src_addr", "dst_addr", "ip_version"}
NAME_REQUIRED = {"ts", "addr", "name", "source"}
ADDRESS_FIELDS = {"src_addr", "dst_addr", "addr", "client_addr"}
ENUMS: dict[str, tuple[str, ...]] = {
    "end_reason": ("", *END_REASONS),
    "initiator": INITIATORS,
    "source": NAME_SOURCES,
}


def _fail(kind: str, row: int, field: str, problem: str) -> ContractError:
    return ContractError(f"{kind} row {row}: field {field}: {problem}")


def _first_bad(kind: str, field: str, values: Sequence[Any], check) -> ContractError:
    for index, value in enumerate(values):
        problem = check(value)
        if problem:
            return _fail(kind, index, field, problem)
    return ContractError(f"{kind}: field {field}: bad values")


def _int_problem(limit: int):
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {value!r}"
        if value < 0 or value > limit:
            return f"{value} is out of range 0..{limit}"
        return None

    return check


def _time_column(kind: str, field: str, values: Sequence[Any]) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = None
    if array is not None and pa.types.is_integer(array.type) and array.null_count == 0:
        return array.cast(pa.int64()).cast(pa.timestamp("us"))
    converted = []
    for index, value in enumerate(values):
        if value is None:
            raise _fail(kind, index, field, "missing timestamp")
        try:
            converted.append(to_us(value))
        except ContractError as exc:
            raise _fail(kind, index, field, str(exc)) from None
    return pa.array(converted, pa.int64()).cast(pa.timestamp("us"))


def _int_column(kind: str, field: str, sql_type: str, values: Sequence[Any], required: bool) -> pa.Array:
    limit = INT_LIMITS[sql_type]
    try:
        array = pa.array(values)
        ok = pa.types.is_integer(array.type) or pa.types.is_null(array.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        ok = False
    if ok and len(array) and array.null_count < len(array):
        low, high = pc.min_max(array).values()
        ok = low.as_py() >= 0 and high.as_py() <= limit
    if not ok:
        raise _first_bad(kind, field, values, _int_problem(limit))
    if array.null_count:
        if required:
            raise _first_bad(kind, field, values, lambda v: "missing value" if v is None else None)
        array = pc.fill_null(array.cast(pa.int64()), 0)
    return array.cast(ARROW_TYPES[sql_type])


# Dotted-quad IPv4 already in canonical form (no leading zeros): most addresses; checked in one
# vectorised pass so only the rest go through ipaddress.
_CANONICAL_V4 = (
    r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$"
)


@lru_cache(maxsize=65536)
def _canonical_address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _string_column(kind: str, field: str, values: Sequence[Any], required: bool) -> pa.Array:
    try:
        array = pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise _first_bad(
            kind,
            field,
            values,
            lambda v: None if v is None or isinstance(v, str) else f"expected text, got {v!r}",
        ) from None
    if array.null_count:
        if required:
            raise _first_bad(kind, field, values, lambda v: "missing value" if v is None else None)
        array = pc.fill_null(array, "")
    return _check_text(kind, field, array)


def _check_text(kind: str, field: str, array: pa.Array) -> pa.Array:
    """Enumerations must hold a known value; addresses must parse, and are put in canonical form.
    Works on the distinct values, so a column of a million repeats costs one pass."""
    if field not in ADDRESS_FIELDS and field not in ENUMS:
        return array
    unique = pc.unique(array)  # in order of first appearance: the first bad one names the first bad row
    if field in ENUMS:
        allowed = ENUMS[field]
        for value in unique.to_pylist():
            if value not in allowed:
                raise _fail(kind, pc.index(array, value).as_py(), field, f"unknown value {value!r}")
        return array
    mapping = {}
    plain = pc.match_substring_regex(unique, _CANONICAL_V4)
    for value in pc.filter(unique, pc.invert(plain)).to_pylist():
        if value == "" and field == "client_addr":
            continue
        canonical = _canonical_address(value)
        if canonical is None:
            raise _fail(kind, pc.index(array, value).as_py(), field, f"not an IP address: {value!r}")
        if canonical != value:
            mapping[value] = canonical
    if mapping:
        old = pa.array(list(mapping), pa.string())
        new = pa.array(list(mapping.values()), pa.string())
        index = pc.index_in(array, old)
        array = pc.if_else(pc.is_null(index), array, pc.take(new, index))
    return array


def _list_column(kind: str, field: str, values: Sequence[Any]) -> pa.Array:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
            return f"expected a list of text, got {value!r}"
        return None

    try:
        array = pa.array(values)  # inferred: a text where a list belongs must not pass as characters
        ok = pa.types.is_null(array.type) or (
            pa.types.is_list(array.type) and array.type.value_type in (pa.string(), pa.null())
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        ok = False
    if not ok:
        raise _first_bad(kind, field, values, check)
    array = array.cast(pa.list_(pa.string()))
    if array.null_count:
        array = pa.array([v if v is not None else [] for v in array.to_pylist()], pa.list_(pa.string()))
    return array


def _transpose(rows: list[list[Any]], fields: list[str], width: int) -> dict[str, Sequence[Any]]:
    """Rows → one sequence per field: a 2-D object array when every value is a scalar (numpy
    transposes in C, and pyarrow converts its columns faster than lists), else lists."""
    grid = None
    try:
        grid = np.array(rows, dtype=object)
    except ValueError:  # a list value (cname_chain) makes the rows ragged
        pass
    if grid is not None and grid.shape == (len(rows), width):
        return {name: grid[:, i] for i, name in enumerate(fields)}
    # lists, not zip(*rows) tuples: faster here, and pyarrow imports pandas to inspect tuples
    return {name: list(map(itemgetter(i), rows)) for i, name in enumerate(fields)}


def table_from_rows(
    kind: str, fields: Sequence[str], rows: Sequence[Any], probe_id: str | None = None
) -> pa.Table:
    """Validate batch rows of ``kind`` ("flow" or "name") into a table in the contract's schema.

    ``probe_id``: the batch's probe; rows must carry it or leave it empty (then they get it).
    Raises ContractError naming the row and field.
    """
    types, all_fields, required, schema = (
        (FLOW_TYPES, FLOW_FIELDS, FLOW_REQUIRED, FLOW_SCHEMA)
        if kind == "flow"
        else (NAME_TYPES, NAME_FIELDS, NAME_REQUIRED, NAME_SCHEMA)
    )
    fields = list(fields)
    if sorted(fields) != sorted(all_fields) or len(set(fields)) != len(fields):
        missing = sorted(set(all_fields) - set(fields))
        extra = sorted(set(fields) - set(all_fields))
        raise ContractError(
            f"{kind}_fields: does not match the contract (missing {missing}, unknown {extra})"
        )
    if not isinstance(rows, list):
        raise ContractError(f"{kind}s: expected a list of rows")
    width = len(fields)
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            raise ContractError(f"{kind} row {index}: expected a list of {width} values")
    if not rows:
        return schema.empty_table()
    columns = _transpose(rows, fields, width)
    arrays = []
    for field, sql_type in types.items():
        values = columns[field]
        is_required = field in required
        if sql_type == "TIMESTAMP":
            array = _time_column(kind, field, values)
        elif sql_type in INT_LIMITS:
            array = _int_column(kind, field, sql_type, values, is_required)
        elif sql_type == "VARCHAR[]":
            array = _list_column(kind, field, values)
        else:
            array = _string_column(kind, field, values, is_required)
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, schema=schema)
    return _check_table(kind, table, probe_id)


def _check_table(kind: str, table: pa.Table, probe_id: str | None) -> pa.Table:
    if probe_id is not None:
        probes = table.column("probe_id")
        wrong = pc.and_(pc.not_equal(probes, ""), pc.not_equal(probes, probe_id))
        if pc.any(wrong).as_py():
            index = pc.index(wrong, True).as_py()
            raise _fail(
                kind, index, "probe_id", f"{probes[index].as_py()!r} differs from the batch's {probe_id!r}"
            )
        if pc.any(pc.equal(probes, "")).as_py():
            filled = pc.if_else(pc.equal(probes, ""), probe_id, probes)
            table = table.set_column(0, "probe_id", filled)
    if kind == "flow":
        before = pc.less(table.column("flow_end"), table.column("flow_start"))
        if pc.any(before).as_py():
            raise _fail(kind, pc.index(before, True).as_py(), "flow_end", "is before flow_start")
        versions = table.column("ip_version")
        bad = pc.invert(pc.is_in(versions, pa.array([4, 6], pa.uint8())))
        if pc.any(bad).as_py():
            index = pc.index(bad, True).as_py()
            raise _fail(kind, index, "ip_version", f"{versions[index].as_py()} is not 4 or 6")
        sampling = table.column("sampling")
        zero = pc.equal(sampling, 0)
        if pc.any(zero).as_py():
            # a missing sampling rate means unsampled
            table = table.set_column(
                FLOW_FIELDS.index("sampling"),
                "sampling",
                pc.if_else(zero, pa.scalar(1, pa.uint32()), sampling),
            )
    return table


def table_from_flows(flows: Sequence[Flow], probe_id: str | None = None) -> pa.Table:
    rows = [[getattr(flow, key) for key in FLOW_FIELDS] for flow in flows]
    return table_from_rows("flow", FLOW_FIELDS, rows, probe_id)


def table_from_names(names: Sequence[Name], probe_id: str | None = None) -> pa.Table:
    rows = [[getattr(name, key) for key in NAME_FIELDS] for name in names]
    for row in rows:
        row[NAME_FIELDS.index("cname_chain")] = list(row[NAME_FIELDS.index("cname_chain")])
    return table_from_rows("name", NAME_FIELDS, rows, probe_id)


def conform(table: pa.Table, kind: str) -> pa.Table:
    """A caller's Arrow table (µs integers or timestamps) in the store's exact schema, by name."""
    schema = FLOW_SCHEMA if kind == "flow" else NAME_SCHEMA
    arrays = []
    for spec in schema:
        if spec.name not in table.column_names:
            raise ContractError(f"{kind} table: missing column {spec.name}")
        column = table.column(spec.name)
        if pa.types.is_timestamp(spec.type) and pa.types.is_integer(column.type):
            column = column.cast(pa.int64()).cast(spec.type)
        elif pa.types.is_timestamp(column.type) and column.type != spec.type:
            column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64()).cast(spec.type)
        arrays.append(column.cast(spec.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------- the columnar batch encoding


def _offsets(kind: str, field: str, what: str, buffer: pa.Buffer, limit: int) -> int:
    """Offsets must start at or after 0, never decrease and end within ``limit``; returns the last."""
    offsets = np.frombuffer(buffer, dtype="<i4")
    if offsets[0] < 0 or offsets[-1] > limit or bool(np.any(offsets[1:] < offsets[:-1])):
        if offsets[0] < 0:
            problem = f"first offset {offsets[0]} is negative"
        elif offsets[-1] > limit:
            problem = f"last offset {offsets[-1]} runs past the {limit} bytes/items there are"
        else:
            row = int(np.argmax(offsets[1:] < offsets[:-1]))
            problem = f"offsets decrease at row {row}"
        raise ColumnsError(f"{kind} column {field}: {what}: {problem}")
    return int(offsets[-1])


def _wire_array(kind: str, column: dict[str, Any], rows: int, data: pa.Buffer) -> pa.Array:
    """One column's buffers → an Arrow array over the body's memory (no copy), checked in bulk."""
    field, sql_type = column["name"], column["type"]

    def buffer(index: int) -> pa.Buffer | None:
        span = column["buffers"][index]
        return None if span is None else data.slice(span[0], span[1])

    validity = buffer(0)
    try:
        if sql_type == "VARCHAR":
            _offsets(kind, field, "offsets", buffer(1), buffer(2).size)
            array = pa.Array.from_buffers(pa.string(), rows, [validity, buffer(1), buffer(2)])
        elif sql_type == "VARCHAR[]":
            items = _offsets(kind, field, "offsets", buffer(1), COLUMNS_MAX_ROWS * 64)
            if buffer(2).size != (items + 1) * 4:
                raise ColumnsError(
                    f"{kind} column {field}: item offsets of {buffer(2).size} bytes, expected {(items + 1) * 4}"
                )
            _offsets(kind, field, "item offsets", buffer(2), buffer(3).size)
            child = pa.Array.from_buffers(pa.string(), items, [None, buffer(2), buffer(3)])
            array = pa.Array.from_buffers(
                pa.list_(pa.string()), rows, [validity, buffer(1)], children=[child]
            )
        else:
            array = pa.Array.from_buffers(ARROW_TYPES[sql_type], rows, [validity, buffer(1)])
        array.validate(full=True)  # utf-8 of every text value, and the bounds once more
    except pa.ArrowInvalid as exc:
        raise ColumnsError(
            f"{kind} column {field}: {exc}", "bad_utf8" if "UTF8" in str(exc) else "bad_columns"
        ) from None
    if array.null_count != column.get("nulls", 0):
        raise ColumnsError(
            f"{kind} column {field}: declares {column.get('nulls', 0)} nulls, its bitmap has {array.null_count}"
        )
    return array


def _contract_array(kind: str, field: str, sql_type: str, array: pa.Array, required: bool) -> pa.Array:
    """The JSON path's rules, on an Arrow array: required fields have no nulls, the rest get defaults."""
    if array.null_count and (required or sql_type == "TIMESTAMP"):
        row = pc.index(pc.is_null(array), True).as_py()
        raise _fail(kind, row, field, "missing value")
    if sql_type == "UBIGINT" and len(array) and (pc.max(array).as_py() or 0) > INT_LIMITS[sql_type]:
        row = pc.index(pc.greater(array, pa.scalar(INT_LIMITS[sql_type], array.type)), True).as_py()
        raise _fail(kind, row, field, f"{array[row].as_py()} is out of range 0..{INT_LIMITS[sql_type]}")
    if sql_type == "VARCHAR[]":
        if array.null_count:
            array = pa.array([v if v is not None else [] for v in array.to_pylist()], pa.list_(pa.string()))
        if array.values.null_count:
            raise ColumnsError(f"{kind} column {field}: a list item is null")
        return array
    if array.null_count:
        array = pc.fill_null(array, "" if sql_type == "VARCHAR" else 0)
    if sql_type == "VARCHAR":
        array = _check_text(kind, field, array)
    return array


def tables_from_columns(
    body: bytes, probe_id_required: bool = True, layout: tuple[dict[str, Any], int] | None = None
) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    """A columnar batch body (hostflow.records.encode_columns) → (header, flows, names) in the
    contract's schema. The arrays point into ``body``; nothing is copied unless a value needs
    fixing (a default for a null, a canonical address). Raises ContractError / ColumnsError."""
    header, start = layout or read_columns_layout(body)
    probe_id = header.get("probe_id") if probe_id_required else None
    data = pa.py_buffer(body).slice(start)
    tables = []
    for kind, types, required, schema in (
        ("flow", FLOW_TYPES, FLOW_REQUIRED, FLOW_SCHEMA),
        ("name", NAME_TYPES, NAME_REQUIRED, NAME_SCHEMA),
    ):
        section = header[f"{kind}s"]
        if not section["rows"]:
            tables.append(schema.empty_table())
            continue
        by_name = {column["name"]: column for column in section["columns"]}
        arrays = [
            _contract_array(kind, field, sql_type, _wire_array(kind, by_name[field], section["rows"], data),
                            field in required)
            for field, sql_type in types.items()
        ]  # fmt: skip
        table = pa.Table.from_arrays(arrays, schema=schema)
        tables.append(_check_table(kind, table, probe_id if isinstance(probe_id, str) else None))
    return header, tables[0], tables[1]
