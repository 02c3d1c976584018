"""The same conversion ferry's benchmark measures, done with pyarrow the way a Python loader would:
read the DMS file, drop DMS's Op and timestamp columns, add ferry's six metadata columns, make the
same type fixes (unsigned 64-bit to DECIMAL(20,0), unsigned 32-bit to INT64, TINYINT(1) to BOOL,
DATETIME relabelled as a wall clock), write snappy parquet.

usage: pyarrow_convert.py INPUT OUTPUT KEY SOURCE --threads N
"""

import argparse
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

parser = argparse.ArgumentParser()
parser.add_argument("input")
parser.add_argument("output")
parser.add_argument("key")
parser.add_argument("source")
parser.add_argument("--threads", type=int, default=0, help="0: pyarrow's default")
args = parser.parse_args()

if args.threads:
    pa.set_cpu_count(args.threads)
    pa.set_io_thread_count(args.threads)
use_threads = args.threads != 1

started = time.perf_counter()
table = pq.read_table(args.input, use_threads=use_threads)
n = table.num_rows
ts = table.column("dms_commit_ts")
commit = pc.cast(pc.cast(ts, pa.timestamp("us")), pa.timestamp("us", tz="UTC"))
drop = [c for c in ("Op", "dms_commit_ts") if c in table.column_names]
table = table.drop_columns(drop)
columns, names = [], []
for name, column in zip(table.column_names, table.columns):
    t = column.type
    if pa.types.is_uint64(t):
        column = pc.cast(column, pa.decimal128(20, 0))
    elif pa.types.is_uint32(t):
        column = pc.cast(column, pa.int64())
    elif name == "is_settled":
        column = pc.not_equal(column, 0)
    elif name == "placed_at":
        column = pc.cast(column, pa.timestamp("us"))
    columns.append(column)
    names.append(name)
meta = [
    ("_ferry_op", pa.repeat(pa.scalar("LOAD"), n)),
    ("_ferry_commit_ts", commit),
    ("_ferry_file_seq", pa.repeat(pa.scalar("0..0000000000.00000001.LOAD00000001.parquet"), n)),
    ("_ferry_row", pa.array(np.arange(n, dtype=np.int64))),
    ("_ferry_file", pa.repeat(pa.scalar(args.key), n)),
    ("_ferry_source", pa.repeat(pa.scalar(args.source), n)),
]
out = pa.table([c for _, c in meta] + columns, names=[m for m, _ in meta] + names)
pq.write_table(out, args.output, compression="snappy")
print(json.dumps({"rows": n, "seconds": time.perf_counter() - started}))
