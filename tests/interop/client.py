#!/usr/bin/env python3
"""A pushgate client on Python's `websockets` (asyncio), for the interop tests.

    client.py URL MODE --token JWT [--count N] [--since EPOCH:SEQ]
              [--timeout S] [--grace-ms MS]

MODE: `header` sends the token as `Authorization: Bearer`, `query` as
`?token=`; `resume` sends it in the header and adds `?since=EPOCH:SEQ`.

Prints JSON lines on stdout: the welcome as received; in resume mode
`{"type":"resume","recovered":...}`; each message after it as received;
then, after N pushes and a grace period in which anything extra is printed
too, `{"type":"closed","code":...}` with the close code the server answered
the client's close with. On timeout prints `{"type":"timeout"}` and exits 2;
on any error prints `{"type":"error",...}` and exits 1.
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect


def emit(obj):
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def build_url(url, mode, token, since):
    params = []
    if mode == "query":
        params.append("token=" + token)
    if mode == "resume":
        params.append("since=" + since)
    if params:
        url += ("&" if "?" in url else "?") + "&".join(params)
    return url


async def run(args):
    headers = {}
    if args.mode in ("header", "resume"):
        headers["Authorization"] = "Bearer " + args.token
    url = build_url(args.url, args.mode, args.token, args.since)
    # Defaults otherwise: the client offers permessage-deflate (the server
    # must decline it) and sends its own keepalive pings.
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        welcome = json.loads(await ws.recv())
        emit(welcome)
        if args.mode == "resume":
            emit({"type": "resume", "recovered": welcome.get("recovered")})
        pushes = 0
        while pushes < args.count:
            message = json.loads(await ws.recv())
            emit(message)
            if message.get("type") == "push":
                pushes += 1
        # Anything after the expected pushes is printed too, so the test
        # sees extras and duplicates.
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), args.grace_ms / 1000)
                emit(json.loads(message))
        except asyncio.TimeoutError:
            pass
    # Leaving the block sent a close (1000) and waited for the server's.
    emit({"type": "closed", "code": ws.close_code})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("mode", choices=["header", "query", "resume"])
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--since", default=None)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--grace-ms", type=int, default=300)
    args = parser.parse_args()
    if args.mode == "resume" and not args.since:
        parser.error("resume needs --since EPOCH:SEQ")
    try:
        asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        emit({"type": "timeout"})
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - reported to the test as a line
        emit({"type": "error", "error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


if __name__ == "__main__":
    main()
