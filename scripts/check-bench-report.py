#!/usr/bin/env python3
"""Checks bench reports against docs/bench-report.schema.json (arbor-bench-report/2).

    scripts/check-bench-report.py REPORT.json...

Prints one line per report; exits 1 naming the first field that breaks the schema. Needs
`jsonschema` (scripts/python-env.sh and benches/peers/setup.sh install it).
"""

import json
import pathlib
import sys

import jsonschema

SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "docs" / "bench-report.schema.json"


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    failed = False
    for path in sys.argv[1:]:
        try:
            report = json.loads(pathlib.Path(path).read_text())
        except (OSError, ValueError) as e:
            print(f"{path}: cannot read it as JSON: {e}", file=sys.stderr)
            failed = True
            continue
        errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
        if errors:
            for e in errors[:5]:
                where = "/".join(str(p) for p in e.absolute_path) or "(top)"
                print(f"{path}: {where}: {e.message}", file=sys.stderr)
            failed = True
        else:
            names = ", ".join(s["name"] for s in report["scenarios"])
            print(f"{path}: {report['schema']} from {report['system']['name']}: {names}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
