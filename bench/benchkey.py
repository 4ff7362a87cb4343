"""The bench's tokenbook key: issued with `tokenbook keys issue`, as an operator would."""

from __future__ import annotations

import json
import subprocess

from tokenbook.testing.stack import executable


def issue_key(redis_url: str, *, agent: str, team: str = "perf") -> str:
    """A fresh key (owner ``bench``, workload ``bench``) in the registry at ``redis_url``."""
    issued = subprocess.run(
        [
            executable("tokenbook"),
            "keys",
            "issue",
            "--owner",
            "bench",
            "--team",
            team,
            "--agent",
            agent,
            "--workload",
            "bench",
            "--format",
            "json",
            "--redis-url",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return str(json.loads(issued.stdout)["key"])
