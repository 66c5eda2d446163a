"""README "Query your table": every recipe (but Spark's) run as printed, on a local and an S3 table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.data import write_ndjson_files
from tests.support.moto_server import MotoServer

RECIPES = sorted((Path(__file__).resolve().parents[2] / "examples" / "query").glob("*.py"))
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_is_in_the_readme_as_it_is_run(recipe: Path) -> None:
    body = recipe.read_text()
    code = body.split('"""', 2)[2].strip()  # the snippet, without its docstring
    assert code in README, f"README does not show {recipe.name} as it is"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_reads_the_table_it_is_given(recipe: Path, table_uri: str, storage_options: dict[str, str],
                                                 moto_server: MotoServer, tmp_path: Path) -> None:  # fmt: skip
    dataset = write_ndjson_files(tmp_path / "src", files=2, rows_per_file=150)
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env = moto_server.env() if table_uri.startswith("s3://") else local_env
    ingest = subprocess.run([sys.executable, "-m", "lakesink", "ingest", str(dataset.directory), table_uri, "--app-id", "q"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    # No network here: put DuckDB's delta and httpfs extensions in its extension directory from the
    # duckdb-extensions wheels, as a user without network would; the recipe's INSTALL then finds them.
    import duckdb
    import duckdb_extensions

    with duckdb.connect() as con:
        for extension in ("delta", "httpfs"):
            duckdb_extensions.import_extension(extension, con=con)
    run = subprocess.run([sys.executable, str(recipe), table_uri], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(rf"\b{dataset.total} rows, {dataset.total} distinct ids", run.stdout), run.stdout
