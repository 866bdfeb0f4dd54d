"""`byzer-like cluster start|stop|status`: the workspace's persistent local Ray head."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import cluster
from .common import NOTHING_TO_DO, OK, Parents, workspace


def cmd_cluster(args: argparse.Namespace) -> int:
    ws = workspace(args)
    if args.action == "start":
        info = cluster.start_head(ws, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        print(f"cluster running: address {info.address}  dashboard {info.dashboard_url}  (workspace {ws.root})")
        if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
            print("the dashboard asks for Ray's auth token (token authentication is on): "
                  "`ray get-auth-token` prints it (it is kept in ~/.ray/auth_token)")
    elif args.action == "stop":
        if not cluster.stop_head(ws):
            print("no cluster was running")
            return NOTHING_TO_DO
        print("cluster stopped")
    else:
        st = cluster.status(ws)
        print(json.dumps(st, indent=2))
        return OK if st["running"] else NOTHING_TO_DO
    return OK


def add_commands(sub: Any, parents: Parents) -> None:
    c = sub.add_parser("cluster", parents=[parents.common])
    c.add_argument("action", choices=("start", "stop", "status"))
    c.add_argument("--num-cpus", type=int, help="CPUs the head offers (default: max(cores, 4))")
    c.add_argument("--num-gpus", type=int)
    c.set_defaults(func=cmd_cluster)
