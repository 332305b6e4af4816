#!/usr/bin/env python3
"""A one-answer DNS server on UDP for the e2e tests: what nginx's `resolver`
in `mail {}` gets when it looks the SMTP client up (the `Client-Host` the
daemon sees).

--mode nxdomain   every query: NXDOMAIN        -> Client-Host: [UNAVAILABLE]
--mode servfail   every query: SERVFAIL        -> Client-Host: [TEMPUNAVAIL]
--mode name       PTR: --name; A: 127.0.0.1    -> Client-Host: <name>
                  (nginx checks that the name resolves back to the client)

Usage: dns_stub.py --port N --mode MODE [--name NAME]
Stops on SIGTERM/SIGINT.
"""

import argparse
import signal
import socket
import struct
import sys

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
TYPE_A, TYPE_PTR = 1, 12


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def question_end(query):
    """Offset just past the (single) question: name, type, class."""
    i = 12
    while query[i] != 0:
        i += 1 + query[i]
    return i + 1 + 4


def answer(query, mode, name):
    (qid, flags) = struct.unpack("!HH", query[:4])
    end = question_end(query)
    question = query[12:end]
    qtype = struct.unpack("!H", query[end - 4 : end - 2])[0]
    records = []
    rcode = {"nxdomain": NXDOMAIN, "servfail": SERVFAIL}.get(mode, NOERROR)
    if mode == "name":
        if qtype == TYPE_PTR:
            records.append((TYPE_PTR, encode_name(name)))
        elif qtype == TYPE_A:
            records.append((TYPE_A, socket.inet_aton("127.0.0.1")))
    # QR, opcode and RD as asked, RA, the rcode.
    out_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode
    head = struct.pack("!HHHHHH", qid, out_flags, 1, len(records), 0, 0)
    body = b""
    for rtype, rdata in records:
        # The question's name by pointer (offset 12), class IN, TTL 60.
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, len(rdata)) + rdata
    return head + question + body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["nxdomain", "servfail", "name"], required=True)
    parser.add_argument("--name", default="client.example.test")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    print(f"dns_stub: {args.mode} on {args.host}:{args.port}", flush=True)
    while True:
        query, peer = sock.recvfrom(512)
        try:
            sock.sendto(answer(query, args.mode, args.name), peer)
        except (IndexError, struct.error) as e:
            print(f"dns_stub: bad query from {peer}: {e}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
