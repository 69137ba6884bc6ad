#!/usr/bin/env python3
"""A pushgate client on Python's `websockets` (asyncio), for the interop tests.

    client.py URL MODE --token JWT [--count N] [--since EPOCH:SEQ]
              [--timeout S] [--grace-ms MS] [--send-bytes N] [--send-bomb]

MODE: `header` sends the token as `Authorization: Bearer`, `query` as
`?token=`; `resume` sends it in the header and adds `?since=EPOCH:SEQ`.

Prints JSON lines on stdout: the welcome as received; in resume mode
`{"type":"resume","recovered":...}`; each message after it as received;
then, after N pushes and a grace period in which anything extra is printed
too, `{"type":"closed","code":...}` with the close code the server answered
the client's close with. On timeout prints `{"type":"timeout"}` and exits 2;
on any error prints `{"type":"error",...}` and exits 1.

permessage-deflate (offered, as by default): the welcome line gets
`"_deflate": true|false` (negotiated or not) and every message line
`"_compressed": true|false` (RSV1 on its first frame). `--send-bytes N` sends
a compressible text message of about N bytes after the welcome;
`--send-bomb` sends 1 MB of "a" (a few KB compressed) and prints the close
code the server answers with.
"""

import argparse
import asyncio
import collections
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Opcode

# RSV1 of each data message's first frame, in arrival order.
RSV1_SEEN = collections.deque()


class RecordingDeflate(PerMessageDeflate):
    """The library's permessage-deflate, noting which messages were compressed."""

    def decode(self, frame, *, max_size=None):
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            RSV1_SEEN.append(frame.rsv1)
        return super().decode(frame, max_size=max_size)


class RecordingFactory(ClientPerMessageDeflateFactory):
    """The default offer (`permessage-deflate; client_max_window_bits`)."""

    def process_response_params(self, params, accepted_extensions):
        extension = super().process_response_params(params, accepted_extensions)
        extension.__class__ = RecordingDeflate
        return extension


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
    # Defaults otherwise: the client offers permessage-deflate as the
    # library does by default (a server without `deflate` declines it) and
    # sends its own keepalive pings.
    extensions = [RecordingFactory(compress_settings={"memLevel": 5})]
    async with connect(
        url, additional_headers=headers, open_timeout=10, extensions=extensions
    ) as ws:

        async def receive():
            message = json.loads(await ws.recv())
            message["_compressed"] = RSV1_SEEN.popleft() if RSV1_SEEN else False
            return message

        welcome = await receive()
        welcome["_deflate"] = any(
            isinstance(e, PerMessageDeflate) for e in ws.protocol.extensions
        )
        emit(welcome)
        if args.mode == "resume":
            emit({"type": "resume", "recovered": welcome.get("recovered")})
        if args.send_bytes:
            note = {"type": "note", "pad": "0123456789abcdef" * (args.send_bytes // 16)}
            await ws.send(json.dumps(note))
        if args.send_bomb:
            await ws.send("a" * 1_000_000)
            try:
                while True:
                    emit(await receive())
            except ConnectionClosed:
                emit({"type": "closed", "code": ws.close_code})
                return
        pushes = 0
        while pushes < args.count:
            message = await receive()
            emit(message)
            if message.get("type") == "push":
                pushes += 1
        # Anything after the expected pushes is printed too, so the test
        # sees extras and duplicates.
        try:
            while True:
                message = await asyncio.wait_for(receive(), args.grace_ms / 1000)
                emit(message)
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
    parser.add_argument("--send-bytes", type=int, default=0)
    parser.add_argument("--send-bomb", action="store_true")
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
