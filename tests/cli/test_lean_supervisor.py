"""`gossamer run` stays resident beside every workload as the supervisor of its proxy
and app: it must not load what only the proxy or the API client needs."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("asyncio", "ssl", "http.client", "email", "pydantic", "cryptography", "gossamer.proxy")


def test_the_run_supervisor_loads_neither_asyncio_nor_ssl_nor_the_proxy() -> None:
    code = (
        "import json, sys\n"
        "from gossamer.cli import main\n"
        "parser = main.build_parser([main.LEAN_COMMANDS['run']])\n"
        "args = parser.parse_args(['run', '--name', 'web-1', '--port', 'http=8080:18080/http',"
        " '--upstream', 'db:5432=127.0.0.1:15432', '--', 'true'])\n"
        "assert args.func.__name__ == 'run_wrapped', args.func\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(out.stdout)
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []
