#!/usr/bin/env python3
"""SMTP backend for the end-to-end tests: accepts everything, records it.

nginx's SMTP proxy (with `xclient on`) logs in to this backend by sending
`EHLO <server_name>`, then `XCLIENT ADDR=... LOGIN=... NAME=...` (expecting a
fresh 220 greeting, as Postfix sends), then the client's EHLO, and then
relays the client's MAIL/RCPT/DATA. Each accepted message is appended as one
JSON object per line to --out (or, if --out ends in ".toml", as one
[[message]] table: the Rust tests read that), with everything the session said before it,
so a test can assert on e.g. the XCLIENT LOGIN= nginx passed on.

Usage: smtp_sink.py --port N --out FILE [--host 127.0.0.1]
Stops on SIGTERM/SIGINT.
"""

import argparse
import asyncio
import json
import os
import signal

import toml_out

HOSTNAME = "sink.example.test"


def xtext_decode(value):
    """RFC 3461 xtext: "+XX" is the byte with hex value XX."""
    out = bytearray()
    raw = value.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"+" and i + 3 <= len(raw):
            try:
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "replace")


class Session:
    def __init__(self, reader, writer, out_path):
        self.reader = reader
        self.writer = writer
        self.out_path = out_path
        self.commands = []
        self.ehlo = []
        self.xclient = {}
        self.xclient_count = 0
        self.mail_from = None
        self.rcpt_to = []

    async def send(self, line):
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    def record(self, data):
        entry = {
            "commands": self.commands,
            "ehlo": self.ehlo,
            "xclient": self.xclient,
            "xclient_count": self.xclient_count,
            "mail_from": self.mail_from,
            "rcpt_to": self.rcpt_to,
            "data": data,
        }
        if self.out_path.endswith(".toml"):
            line = toml_out.table(entry, "message")
        else:
            line = json.dumps(entry, ensure_ascii=False) + "\n"
        # One write() call per record keeps concurrent sessions' lines whole.
        fd = os.open(self.out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    async def read_data(self):
        lines = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                return None
            line = raw.rstrip(b"\r\n")
            if line == b".":
                return b"\r\n".join(lines).decode("utf-8", "replace")
            if line.startswith(b".."):
                line = line[1:]
            lines.append(line)

    async def run(self):
        await self.send(f"220 {HOSTNAME} ESMTP sink")
        while True:
            raw = await self.reader.readline()
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            self.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                self.ehlo.append(arg)
                if verb == "EHLO":
                    await self.send(f"250-{HOSTNAME}")
                    await self.send("250-XCLIENT ADDR LOGIN NAME HELO PROTO")
                    await self.send("250-8BITMIME")
                    await self.send("250 ENHANCEDSTATUSCODES")
                else:
                    await self.send(f"250 {HOSTNAME}")
            elif verb == "XCLIENT":
                self.xclient_count += 1
                for pair in arg.split():
                    key, _, value = pair.partition("=")
                    self.xclient[key.upper()] = xtext_decode(value)
                # Postfix answers XCLIENT with a new greeting; nginx waits
                # for exactly a 220 here.
                await self.send(f"220 {HOSTNAME} ESMTP sink")
            elif verb == "MAIL":
                self.mail_from = arg
                self.rcpt_to = []
                await self.send("250 2.1.0 Ok")
            elif verb == "RCPT":
                self.rcpt_to.append(arg)
                await self.send("250 2.1.5 Ok")
            elif verb == "DATA":
                if self.mail_from is None or not self.rcpt_to:
                    await self.send("503 5.5.1 Error: need MAIL and RCPT")
                    continue
                await self.send("354 End data with <CR><LF>.<CR><LF>")
                data = await self.read_data()
                if data is None:
                    return
                self.record(data)
                self.mail_from = None
                self.rcpt_to = []
                await self.send("250 2.0.0 Ok: queued")
            elif verb == "RSET":
                self.mail_from = None
                self.rcpt_to = []
                await self.send("250 2.0.0 Ok")
            elif verb == "NOOP":
                await self.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                await self.send("221 2.0.0 Bye")
                return
            else:
                await self.send("502 5.5.2 Error: command not recognized")


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    async def handle(reader, writer):
        try:
            await Session(reader, writer, args.out).run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
