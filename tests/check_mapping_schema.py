"""Checks the committed JSON Schema with an independent validator (what editors use):
every committed mapping file passes, and typical mistakes are flagged."""

import copy
import json
import pathlib
import sys

import jsonschema

root = pathlib.Path(__file__).resolve().parent.parent
schema = json.loads((root / "mappings/schema/ferry-mapping.schema.json").read_text())
Validator = jsonschema.Draft202012Validator
Validator.check_schema(schema)
validator = Validator(schema)

failures = []
files = sorted((root / "mappings").glob("*.json"))
for path in files:
    for error in validator.iter_errors(json.loads(path.read_text())):
        failures.append(f"{path.name}: {error.json_path}: {error.message}")

base = json.loads(files[0].read_text())
table = next(iter(base["tables"]))
mistakes = {
    "misspelt field": lambda d: d["tables"][table].update(primry_key=["id"]),
    "table key without schema": lambda d: d["tables"].update(nodot={}),
    "unknown mode": lambda d: d["tables"][table].update(mode="upsert"),
    "unknown top-level field": lambda d: d.update(extra=1),
    "partition layout typo": lambda d: d["source"].setdefault("dms", {}).update(date_partitioning={"sequence": "YYYY"}),
    "no tables": lambda d: d.update(tables={}),
}
for name, edit in mistakes.items():
    doc = copy.deepcopy(base)
    edit(doc)
    if validator.is_valid(doc):
        failures.append(f"the schema accepts a mapping with a {name}")

for failure in failures:
    print(failure)
passed = len(files) + len(mistakes) - len(failures)
print(f"schema: {passed} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
