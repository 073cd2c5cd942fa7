#!/usr/bin/env python3
"""Render timbral.conf.template into a runnable nginx.conf (standard library only).

The same template serves compose (where envsubst fills it inside the nginx container) and local runs
on loopback, e.g. nginx in front of two ``bentoml serve`` processes, as an unprivileged user:

    python k8s/compose/nginx/render_conf.py --listen 127.0.0.1:18080 \\
        --upstream 127.0.0.1:3001 --upstream 127.0.0.1:3002 -o /tmp/timbral-nginx/nginx.conf
    nginx -e stderr -p /tmp/timbral-nginx/ -c /tmp/timbral-nginx/nginx.conf -g 'daemon off;'

``-p`` is the prefix: pid and temp files are written there (the directory must exist and be writable).
Use ``--check`` to run ``nginx -t`` on the result. Importable too: ``render()``, ``upstream_lines()``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "timbral.conf.template"
PLACEHOLDERS = ("TIMBRAL_LISTEN", "TIMBRAL_UPSTREAMS")
MAX_FAILS = 3
FAIL_TIMEOUT = "10s"
_ADDRESS = re.compile(r"^(unix:/\S+|\[[0-9a-fA-F:]+\]:\d+|[A-Za-z0-9.\-]+:\d+|[A-Za-z0-9.\-]+)$")


def upstream_lines(addresses: list[str], max_fails: int = MAX_FAILS, fail_timeout: str = FAIL_TIMEOUT) -> str:
    """The TIMBRAL_UPSTREAMS value: one ``server`` line per address, with the passive health parameters."""
    if not addresses:
        raise ValueError("at least one upstream address is needed")
    lines = []
    for address in addresses:
        if not _ADDRESS.match(address):
            raise ValueError(f"not an upstream address: {address!r} (expected HOST:PORT)")
        lines.append(f"server {address} max_fails={max_fails} fail_timeout={fail_timeout};")
    return "\n        ".join(lines)


def render(listen: str, upstreams: str | list[str], template: Path = TEMPLATE) -> str:
    """The template with its two placeholders filled; ``upstreams`` is a list of addresses or ready lines."""
    if not re.fullmatch(r"[\w.:\[\]]+( [\w=]+)*", listen):
        raise ValueError(f"not a listen address: {listen!r}")
    value = upstream_lines(upstreams) if isinstance(upstreams, list) else upstreams
    text = template.read_text()
    for name, replacement in (("TIMBRAL_LISTEN", listen), ("TIMBRAL_UPSTREAMS", value)):
        token = "${" + name + "}"
        if token not in text:
            raise ValueError(f"{template} has no {token}")
        text = text.replace(token, replacement)
    return text


def nginx_check(conf: Path, prefix: Path, nginx: str = "nginx") -> subprocess.CompletedProcess:
    """``nginx -t`` on a rendered file, as the current user, with everything under ``prefix``."""
    binary = shutil.which(nginx) or nginx
    return subprocess.run(
        [binary, "-t", "-e", "stderr", "-p", f"{prefix}/", "-c", str(conf)],
        capture_output=True, text=True, check=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="listen address, e.g. 127.0.0.1:18080 or 8080")
    parser.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT",
                        help="an API replica (repeat for each)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the nginx.conf to write")
    parser.add_argument("--check", action="store_true",
                        help="run `nginx -t` with the output's directory as prefix")
    args = parser.parse_args(argv)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(args.listen, args.upstream))
    if args.check:
        result = nginx_check(args.output.resolve(), args.output.resolve().parent)
        sys.stderr.write(result.stderr)
        return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
