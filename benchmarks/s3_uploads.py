#!/usr/bin/env python
"""Single PUT or multipart upload for the data files lakesink writes to S3 (moto), by file size.

    python benchmarks/s3_uploads.py            # 1, 4, 8, 16, 32, 64 MB; median of 5 (~2 minutes)
    python benchmarks/s3_uploads.py --sizes 8,64 --repeat 9

lakesink streams its Parquet files through pyarrow's S3 output stream (with `allow_delayed_open`:
an object under one part, ~10 MB, is one PUT; a larger one a multipart upload of ~10 MB parts sent
in the background while encoding goes on). The alternative for files under 64 MB is to buffer the
whole file and send one PUT (boto3 `put_object`). Each case uploads the same random bytes (Parquet
does not compress them further, as encoded data is) to a fresh key of a real moto server, from one
thread, timed from the first byte handed over to the upload's completion:

* `pyarrow stream`: `S3FileSystem(allow_delayed_open=True).open_output_stream`, written in 1 MiB pieces;
* `boto3 single PUT`: `put_object` of the whole buffer;
* `boto3 multipart x4`: `upload_fileobj` with 8 MiB parts on 4 threads.

Output: benchmarks/results/s3_uploads.json and .md (MB/s by size and way).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.fs as pafs  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

from benchmarks._machine import describe, machine, write_results  # noqa: E402
from tests.support.moto_server import start_moto_server  # noqa: E402

BUCKET = "bench-uploads"
RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("pyarrow stream", "boto3 single PUT", "boto3 multipart x4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,8,16,32,64", help="file sizes in MB (default 1,4,8,16,32,64)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    server = start_moto_server()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        server.create_bucket(BUCKET)
        options = server.storage_options()
        host = options["AWS_ENDPOINT_URL"].split("//", 1)[1]
        fs = pafs.S3FileSystem(
            access_key=options["AWS_ACCESS_KEY_ID"], secret_key=options["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
            endpoint_override=host, scheme="http", allow_delayed_open=True,
        )  # fmt: skip
        client = server.client()
        multipart = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
        count = 0
        for size in sizes:
            data = os.urandom(size * 1_000_000)
            results[str(size)] = {way: [] for way in WAYS}
            for _ in range(args.repeat):
                for way in WAYS:  # interleaved, so drift spreads over all
                    count += 1
                    key = f"f{count}"
                    start = time.perf_counter()
                    if way == "pyarrow stream":
                        with fs.open_output_stream(f"{BUCKET}/{key}") as out:
                            view = memoryview(data)
                            for at in range(0, len(data), 1 << 20):
                                out.write(view[at : at + (1 << 20)])
                    elif way == "boto3 single PUT":
                        client.put_object(Bucket=BUCKET, Key=key, Body=data)
                    else:
                        client.upload_fileobj(io.BytesIO(data), BUCKET, key, Config=multipart)
                    results[str(size)][way].append(time.perf_counter() - start)
                    client.delete_object(Bucket=BUCKET, Key=key)
            line = ", ".join(f"{w} {size / statistics.median(t):.0f} MB/s" for w, t in results[str(size)].items())
            print(f"{size} MB: {line}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    result: dict[str, Any] = {
        "benchmark": "s3_uploads",
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {**machine(), "load_average_at_start": list(os.getloadavg())},
        "config": {"sizes_mb": sizes, "repeat": args.repeat, "ways": list(WAYS)},
        "seconds": results,
    }
    out = RESULTS / "s3_uploads.json"
    write_results(out, result)
    lines = [
        describe(result["machine"]),
        "",
        f"MB/s to moto S3 at the median of {args.repeat} uploads (one thread hands the bytes over; moto shares the 2 cores).",
        "",
        "| size | " + " | ".join(WAYS) + " |",
        "| ---: | " + " | ".join("---:" for _ in WAYS) + " |",
    ]
    for size in sizes:
        cells = [f"{size / statistics.median(results[str(size)][w]):.0f}" for w in WAYS]
        lines.append(f"| {size} MB | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
