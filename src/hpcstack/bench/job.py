"""One benchmark job: ``python -m hpcstack.bench.job REQUEST.json`` on a node.

``hpcstack bench --partition P`` writes a :class:`BenchRequest` (the options,
where the JSON document goes) and submits this module as the job: the options
travel typed, never as a command line rebuilt from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from hpcstack.bench import Options, bench
from hpcstack.errors import UserError
from hpcstack.files import write_atomic


class BenchRequest(BaseModel):
    options: Options
    output: str  # the JSON document (see :func:`hpcstack.bench.report.document`)


def main(argv: list[str]) -> int:
    request = BenchRequest.model_validate_json(Path(argv[0]).read_text())
    try:
        doc = bench(request.options, lambda line: print(line, file=sys.stderr),
                    lambda _what, _n: None)
    except UserError as err:
        print(f"hpcstack: error: {err}", file=sys.stderr)
        return 1
    write_atomic(Path(request.output), json.dumps(doc, indent=2) + "\n")  # read whole
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
