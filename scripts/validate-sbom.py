#!/usr/bin/env python3
"""Validate SBOM files with the reference libraries (used by the test suite).

    scripts/validate-sbom.py spdx FILE...       # spdx-tools: parse + validate_full_spdx_document
    scripts/validate-sbom.py cyclonedx FILE...  # cyclonedx-python-lib: JSON schema 1.6 (strict),
                                                # then the object model's own checks (dependency refs)

Prints one line per problem and exits 1 when any file is invalid, 0 when all are valid.
Installed by scripts/setup-machine.sh (pip packages spdx-tools, cyclonedx-python-lib).
"""
import json
import os
import shutil
import sys
import tempfile


def check_spdx(path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    # parse_anything picks the parser by file name: make sure it reads JSON.
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "sbom.spdx.json")
        shutil.copyfile(path, copy)
        try:
            document = parse_file(copy)
        except Exception as e:  # the parser's own error types vary by version
            return [f"not parseable as SPDX JSON: {e}"]
    messages = validate_full_spdx_document(document, "SPDX-2.3")
    return [f"{m.validation_message} ({m.context.spdx_id or m.context.element_type})" for m in messages]


def check_cyclonedx(path):
    from cyclonedx.model.bom import Bom
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    with open(path, encoding="utf-8") as f:
        text = f.read()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        data = getattr(error, "data", error)
        where = "/".join(str(p) for p in getattr(data, "absolute_path", []))
        return [f"schema: {getattr(data, 'message', data)} at /{where}"]
    try:
        bom = Bom.from_json(json.loads(text))  # type: ignore[attr-defined]
        bom.validate()
    except Exception as e:
        return [f"model: {type(e).__name__}: {e}"]
    return []


def main(argv):
    if len(argv) < 3 or argv[1] not in ("spdx", "cyclonedx"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    check = check_spdx if argv[1] == "spdx" else check_cyclonedx
    failed = False
    for path in argv[2:]:
        problems = check(path)
        for p in problems:
            print(f"{path}: {p}")
        if problems:
            failed = True
        else:
            print(f"{path}: valid {argv[1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
