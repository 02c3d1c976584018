"""ferry's conversion benchmark: ferry convert vs the same work in pyarrow, on DMS files of
10k, 1M and 10M rows written by `ferry sim`. Prints rows/s, MB/s and peak RSS per tool and size,
and the ratio the project targets (ferry >= 3x pyarrow single-threaded on the 1M-row file).

With --day-hours H it replays H hours of the seed's estate instead (6 sources, 68 tables, a
day of 40M changed rows: 200k rows per table at full load, one CDC file per table per minute
with 270 changes on average, scaled to H/24) through `ferry local run`, and prints rows/s,
files/s and the loader's peak RSS, then checks every table against the simulator.

usage: run.py --ferry PATH [--sizes 10k,1m,10m] [--work DIR] [--repeat N] [--day-hours H]
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
KEY = "dms/casino/bets/LOAD00000001.parquet"
SIZES = {"10k": 10_000, "1m": 1_000_000, "10m": 10_000_000}


def measure(cmd):
    """Runs cmd in a child of a fresh process, so that RUSAGE_CHILDREN is this run's alone."""
    probe = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'code': p.returncode, 'out': p.stdout, 'err': p.stderr,"
        " 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True).stdout)
    if result["code"] != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result['err']}")
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--sizes", default="10k,1m,10m")
    parser.add_argument("--work", default=str(pathlib.Path.home() / ".cache/ferry/bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--day-hours", type=float)
    args = parser.parse_args()
    if args.day_hours:
        return day(args)
    work = pathlib.Path(args.work)
    mappings = work / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    (mappings / "bench.json").write_text((HERE / "bench-mapping.json").read_text())

    rows_out = []
    for size in args.sizes.split(","):
        rows = SIZES[size]
        bucket = work / f"bucket-{size}"
        source = bucket / KEY
        if not source.exists():
            print(f"generating the {size}-row DMS file with ferry sim ...", file=sys.stderr, flush=True)
            subprocess.run(
                [args.ferry, "sim", "--mappings", str(mappings), "--out", str(bucket), "--rows", str(rows),
                 "--minutes", "0", "--no-added-column", "--seed", "7", "--load-file-rows", str(rows)],
                check=True, stdout=subprocess.DEVNULL,
            )
        mb = source.stat().st_size / 1e6
        output = work / f"out-{size}.parquet"
        runs = {
            "ferry (1 thread)": [args.ferry, "convert", "--mappings", str(mappings), "--json", "--key", KEY, str(source), str(output)],
            "pyarrow (1 thread)": [sys.executable, str(HERE / "pyarrow_convert.py"), str(source), str(output), KEY, "bench", "--threads", "1"],
            f"pyarrow ({os.cpu_count()} threads)": [sys.executable, str(HERE / "pyarrow_convert.py"), str(source), str(output), KEY, "bench", "--threads", "0"],
        }
        repeat = args.repeat if rows <= 1_000_000 else 1
        for tool, cmd in runs.items():
            best, rss = None, 0
            for _ in range(repeat):
                result = measure(cmd)
                report = json.loads(result["out"].strip().splitlines()[-1])
                assert report["rows"] == rows, report
                best = report["seconds"] if best is None else min(best, report["seconds"])
                rss = max(rss, result["rss_kb"])
            rows_out.append((size, rows, mb, tool, best, rss))
            print(f"{size:>4} {tool:<22} {rows / best:>12,.0f} rows/s {mb / best:>8.1f} MB/s {rss / 1024:>8.1f} MB peak RSS", file=sys.stderr, flush=True)

    print()
    print(f"| file | input MB | tool | rows/s | MB/s | peak RSS MB |")
    print(f"|---|---|---|---|---|---|")
    for size, rows, mb, tool, seconds, rss in rows_out:
        print(f"| {rows:,} rows | {mb:,.0f} | {tool} | {rows / seconds:,.0f} | {mb / seconds:,.1f} | {rss / 1024:,.0f} |")
    by = {(s, t.split(" ")[0] + (" 1" if "(1 thread)" in t else "")): r for s, _, _, t, r, _ in rows_out}
    for size in args.sizes.split(","):
        ferry, py1 = by.get((size, "ferry 1")), by.get((size, "pyarrow 1"))
        if ferry and py1:
            print(f"\n{size}: ferry is {py1 / ferry:.1f}x pyarrow single-threaded")


def day(args):
    import shutil
    import time

    hours = args.day_hours
    work = pathlib.Path(args.work) / f"day-{hours:g}h"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    mappings = HERE.parent / "mappings"
    rows = int(200_000 * hours / 24)
    minutes = int(1440 * hours / 24)
    started = time.perf_counter()
    sim = measure([args.ferry, "sim", "--mappings", str(mappings), "--out", str(work / "bucket"), "--rows", str(rows),
                   "--minutes", str(minutes), "--changes", "270", "--manifest", str(work / "manifest.json")])
    print(f"simulated: {sim['out'].strip()} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    run = measure([args.ferry, "local", "run", "--mappings", str(mappings), "--bucket-dir", str(work / "bucket"),
                   "--warehouse", str(work / "warehouse.sqlite")])
    seconds = time.perf_counter() - started
    summary = run["out"].strip()
    loaded = int(summary.split("loaded ")[2].split(" ")[0])
    loaded_rows = int(summary.split("(")[1].split(" rows")[0])
    verify = measure([args.ferry, "local", "verify", "--manifest", str(work / "manifest.json"), "--warehouse", str(work / "warehouse.sqlite")])
    print(summary)
    print(f"{hours:g} h of the estate: {loaded_rows:,} rows in {loaded:,} files in {seconds:.0f} s: "
          f"{loaded_rows / seconds:,.0f} rows/s, {loaded / seconds:,.0f} files/s, loader peak RSS {run['rss_kb'] / 1024:,.0f} MB; "
          f"verify: {verify['out'].strip()}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
