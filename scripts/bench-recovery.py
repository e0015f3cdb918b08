#!/usr/bin/env python3
"""Time from SIGKILL of a node to every one of its replicas running again elsewhere.

Starts a 3-node cluster of real `arbor` processes on free loopback ports (node_timeout 3s,
the default), deploys an `echo` deployment spread over the nodes, SIGKILLs one node and polls
`arbor deployments --json` until every replica runs on the surviving nodes. Each trial kills
another node (so the leader is killed too, election included), then restarts it.

    cargo build --release && scripts/bench-recovery.py [--trials 6] [--replicas 30]

ARBOR_BIN picks the binary (default target/release/arbor). The figure includes the polling
interval of the CLI (one `arbor deployments` run, tens of ms).
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARBOR = os.environ.get("ARBOR_BIN", os.path.join(ROOT, "target/release/arbor"))
SECRET = "bench-recovery-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder):
    text = '[cluster]\nname = "bench-recovery"\n[scheduler]\nnode_timeout = "3s"\n'
    for node in (1, 2, 3):
        text += (
            f'\n[[nodes]]\nid = {node}\nactors = "127.0.0.1:{free_port()}"\n'
            f'raft = "127.0.0.1:{free_port()}"\ngateway = "127.0.0.1:{free_port()}"\n'
            f'data_dir = "node-{node}"\n[nodes.resources]\ncpu = "8"\nmemory = "8GiB"\ngpu = 0\n'
        )
    path = os.path.join(folder, "cluster.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


# The gateway token `arbor deploy|deployments|undeploy` authenticate with (set in main).
TOKEN = None


def env():
    e = dict(os.environ)
    e["ARBOR_CLUSTER_SECRET"] = SECRET
    if TOKEN:
        e["ARBOR_TOKEN"] = TOKEN
    return e


def start_node(config, node, folder):
    log = open(os.path.join(folder, f"node-{node}.log"), "a")
    return subprocess.Popen(
        [ARBOR, "node", "--config", config, "--node", str(node)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env(),
    )


def arbor(config, *args):
    return subprocess.run(
        [ARBOR, *args, "--config", config], capture_output=True, text=True, env=env()
    )


def deployment(config, name):
    out = arbor(config, "deployments", "--json")
    if out.returncode != 0:
        return None
    for d in json.loads(out.stdout)["deployments"]:
        if d["name"] == name:
            return d
    return None


def wait(config, name, want, limit=60.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        d = deployment(config, name)
        if d is not None and want(d):
            return time.monotonic() - start
        time.sleep(0.02)
    sys.exit(f"gave up waiting for {name}: {deployment(config, name)}")


def nodes_of(d):
    return {r["node"] for r in d["replicas"] if r["state"] == "running"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--replicas", type=int, default=30)
    args = p.parse_args()
    if not os.access(ARBOR, os.X_OK):
        sys.exit(f"{ARBOR} not found: run `cargo build --release` or set ARBOR_BIN")
    folder = tempfile.mkdtemp(prefix="arbor-recovery-")
    config = write_config(folder)
    global TOKEN
    made = arbor(config, "token", "create", "--role", "admin")
    if made.returncode != 0:
        sys.exit(f"arbor token create failed: {made.stderr}")
    TOKEN = made.stdout.strip()
    procs = {n: start_node(config, n, folder) for n in (1, 2, 3)}
    times = []
    try:
        while arbor(config, "deployments").returncode != 0:
            time.sleep(0.1)
        for trial in range(args.trials):
            victim = trial % 3 + 1
            name = f"echo{trial}"
            spec = os.path.join(folder, f"{name}.toml")
            with open(spec, "w") as f:
                f.write(
                    f'name = "{name}"\nkind = "echo"\nreplicas = {args.replicas}\n'
                    '[resources]\ncpu = "100m"\nmemory = "64MiB"\n'
                )
            out = arbor(config, "deploy", "-f", spec)
            if out.returncode != 0:
                sys.exit(out.stderr)
            wait(config, name, lambda d: d["running"] == args.replicas and nodes_of(d) == {1, 2, 3})
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            took = wait(
                config,
                name,
                lambda d: d["running"] == args.replicas and victim not in nodes_of(d),
            )
            times.append(took)
            print(f"trial {trial + 1}: killed node {victim}; its replicas ran elsewhere after {took:.2f} s", flush=True)
            procs[victim] = start_node(config, victim, folder)
            arbor(config, "undeploy", name)
            time.sleep(4)  # the restarted node is heard again and marked ready
        print(
            f"SIGKILL to all {args.replicas // 3} replicas running again (node_timeout 3s): "
            f"median {statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)} trials"
        )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
