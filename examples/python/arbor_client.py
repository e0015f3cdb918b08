#!/usr/bin/env python3
"""A small Arbor gateway client: talks to a node's WebSocket gateway (docs/protocol.md).

    python3 arbor_client.py [--url wss://127.0.0.1:7301/] [--ca ca.pem] [--token T] [--json] COMMAND ...

    status                      the cluster as the node sees it
    generate PROMPT             stream generated text   [--max-tokens N]
    query COLLECTION TEXT       nearest chunks          [--k K]
    rag COLLECTION QUESTION     stream an answer, then its sources  [--k K] [--max-tokens N]

The token comes from --token or the ARBOR_TOKEN environment variable (make one with
`arbor token create --role user`). A wss:// gateway is verified against the cluster's CA:
--ca or ARBOR_CA, the ca.pem in cluster.toml's [tls] dir. Needs the `websockets` package (scripts/python-env.sh).
Exit status: 0 on success, 1 when the gateway answers with an error (its code and message
are printed), 2 when the gateway cannot be reached or the arguments are wrong.
"""

import argparse
import asyncio
import itertools
import json
import os
import ssl
import sys

try:  # websockets >= 13 has the new asyncio implementation here
    from websockets.asyncio.client import connect
except ImportError:  # older releases: the legacy client, same calls for what we use
    from websockets import connect
from websockets.exceptions import ConnectionClosed

PROTOCOL_VERSION = 1


class GatewayError(Exception):
    """An `error` message from the gateway: its code, message and (maybe) field."""

    def __init__(self, msg):
        self.code = msg.get("code", "unknown")
        self.field = msg.get("field")
        super().__init__(msg.get("message", ""))

    def __str__(self):
        where = f" (field {self.field})" if self.field else ""
        return f"{self.code}{where}: {self.args[0]}"


class Client:
    """One authenticated connection. Jobs run one at a time, so every message is ours."""

    def __init__(self, ws):
        self.ws = ws
        self.refs = (f"py{i}" for i in itertools.count(1))

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def recv(self):
        # Text frames only: each one is a JSON object tagged by "type".
        return json.loads(await self.ws.recv())

    async def auth(self, token):
        await self.send({"type": "auth", "v": PROTOCOL_VERSION, "token": token})
        msg = await self.recv()
        if msg["type"] == "error":
            raise GatewayError(msg)
        return msg  # {"type": "authenticated", "node", "role", "token_id", "limits"}

    async def run(self, job, on_message=lambda msg: None):
        """Submits `job` and follows it to its end; returns the final result's data.

        `on_message` sees every message about the job (`token`, `progress`, partial
        `result`s), for streaming. An `error`, or a job that ends failed or cancelled, raises
        GatewayError. Ctrl-C cancels the job before giving up."""
        ref = next(self.refs)
        await self.send({"type": "submit", "ref": ref, "job": job})
        job_id, data = None, None
        try:
            while True:
                msg = await self.recv()
                kind = msg["type"]
                if kind == "error":
                    # Before `accepted` the job never ran; after, it failed. Either way,
                    # the error says why (a failed job's `event` follows; no need to wait).
                    raise GatewayError(msg)
                if kind == "accepted" and msg.get("ref") == ref:
                    job_id = msg["job"]
                    continue
                if job_id is None or msg.get("job") != job_id:
                    continue  # not about our job (nothing else is in flight, but be strict)
                on_message(msg)
                if kind == "result" and msg.get("final"):
                    data = msg["data"]
                elif kind == "event" and msg["state"] in ("succeeded", "failed", "cancelled"):
                    if msg["state"] != "succeeded":
                        raise GatewayError(
                            {"code": f"job_{msg['state']}", "message": msg.get("reason") or ""}
                        )
                    return data
        except (asyncio.CancelledError, KeyboardInterrupt):
            if job_id is not None:  # best effort: stop the work on the cluster too
                await asyncio.shield(self.send({"type": "cancel", "job": job_id}))
                print(f"\ncancelled job {job_id}", file=sys.stderr)
            raise


def stream_tokens(msg):
    """Prints generated text as it arrives."""
    if msg["type"] == "token":
        print(msg["text"], end="", flush=True)


def excerpt(text, width=100):
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


def print_hits(hits):
    for i, hit in enumerate(hits, 1):
        name = hit.get("title") or hit["doc_id"]
        print(f"[{i}] {hit['score']:.3f}  {name} ({hit['doc_id']} #{hit['chunk_id']})")
        print(f"    {excerpt(hit['text'])}")


def print_missing(data):
    if data.get("missing_partitions"):
        print(f"note: partitions {data['missing_partitions']} did not answer; "
              "results may be incomplete", file=sys.stderr)


async def command(client, args):
    """Runs the chosen subcommand on an authenticated client."""
    if args.command == "status":
        data = await client.run({"kind": "status"})
        if args.json:
            print(json.dumps(data, indent=2))
            return
        up = [n for n in data["nodes"] if n["state"] == "up"]
        print(f"node {data['node']} answered; leader: {data.get('leader') or 'none'}")
        print(f"nodes: {len(up)} up of {len(data['nodes'])}")
        for n in data["nodes"]:
            draining = ", draining" if n.get("draining") else ""
            print(f"  node {n['id']}: {n['state']}{draining}")
        print(f"deployments: {data['deployments']}, collections: {data['collections']}, "
              f"jobs running: {data['jobs_running']}")

    elif args.command == "generate":
        job = {"kind": "generate", "prompt": args.prompt, "max_tokens": args.max_tokens}
        data = await client.run(job, stream_tokens)
        print()
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print(f"({data['generated_tokens']} tokens, finish: {data['finish_reason']})",
                  file=sys.stderr)

    elif args.command == "query":
        job = {"kind": "query", "collection": args.collection, "text": args.text, "k": args.k}
        data = await client.run(job)
        if args.json:
            print(json.dumps(data, indent=2))
            return
        if not data["results"]:
            print("no results (is anything ingested in this collection?)")
        print_hits(data["results"])
        print_missing(data)

    elif args.command == "rag":
        job = {"kind": "rag", "collection": args.collection, "question": args.question,
               "k": args.k, "max_tokens": args.max_tokens}
        # Sources come first (a partial result), then the answer as tokens.
        data = await client.run(job, stream_tokens)
        print()
        if args.json:
            print(json.dumps(data, indent=2))
            return
        print(f"\nsources (finish: {data['finish_reason']}):")
        print_hits(data["sources"])
        print_missing(data)


async def main(args):
    token = (args.token or os.environ.get("ARBOR_TOKEN", "")).strip()
    if not token:
        print("error: no token: pass --token TOKEN or set ARBOR_TOKEN "
              "(make one with `arbor token create --role user`)", file=sys.stderr)
        return 2
    try:
        # Results (a query's chunks) can be large: allow frames up to 64 MiB.
        tls = None
        if args.url.startswith("wss://"):
            ca = args.ca or os.environ.get("ARBOR_CA")
            if not ca:
                print("error: a wss:// gateway needs the cluster's CA: pass --ca FILE or set "
                      "ARBOR_CA (ca.pem in cluster.toml's [tls] dir)", file=sys.stderr)
                return 2
            tls = ssl.create_default_context(cafile=ca)
        async with connect(args.url, max_size=64 << 20, open_timeout=5, ssl=tls) as ws:
            client = Client(ws)
            hello = await client.auth(token)
            if args.verbose:
                print(f"connected to node {hello['node']} as {hello['role']}", file=sys.stderr)
            await command(client, args)
            return 0
    except GatewayError as e:
        print(f"\nerror: {e}" if args.command in ("generate", "rag") else f"error: {e}",
              file=sys.stderr)
        return 1
    except ConnectionClosed as e:
        print(f"error: the gateway closed the connection: {e}", file=sys.stderr)
        return 1
    except (OSError, asyncio.TimeoutError) as e:
        print(f"error: cannot connect to {args.url}: {e or type(e).__name__} "
              "(is a node running? its gateway address is in cluster.toml)", file=sys.stderr)
        return 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="A small client for the Arbor WebSocket gateway.")
    p.add_argument("--url", default="wss://127.0.0.1:7301/",
                   help="a node's gateway, wss://ADDR/ (ws:// for an insecure loopback "
                        "cluster; default: %(default)s)")
    p.add_argument("--ca", help="the cluster's CA certificate (default: $ARBOR_CA)")
    p.add_argument("--token", help="gateway token (default: $ARBOR_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the result data as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="say which node answered")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the cluster as the node sees it")
    g = sub.add_parser("generate", help="stream generated text")
    g.add_argument("prompt")
    g.add_argument("--max-tokens", type=int, default=64)
    q = sub.add_parser("query", help="the chunks nearest to a text")
    q.add_argument("collection")
    q.add_argument("text")
    q.add_argument("--k", type=int, default=5)
    r = sub.add_parser("rag", help="answer a question from a collection")
    r.add_argument("collection")
    r.add_argument("question")
    r.add_argument("--k", type=int, default=3)
    r.add_argument("--max-tokens", type=int, default=96)
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
