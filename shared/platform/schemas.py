"""Writes the event contract's JSON Schemas to a folder: ``python -m shared.platform.schemas docs/schemas``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fleet_agent.contracts import json_schemas


def render() -> dict[str, str]:
    return {
        f"{name}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "docs/schemas")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (folder / name).write_text(text)
        print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
