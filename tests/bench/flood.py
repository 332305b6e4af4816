#!/usr/bin/env python3
"""Flood benchmark (issue 13): what a burst of wrong passwords for an
expensive-hash user does to everyone else.

Starts nginx-auth-fcgi (serve --listen unix:SOCK --passdb passwd-file:FILE
--log stderr) with a passwd-file holding a {PLAIN} user and an {ARGON2ID}
user (doveadm pw -s ARGON2ID: m=64 MiB, t=3), then for --seconds:

  flood   --connections FastCGI connections (KEEP_CONN, one request after
          another, as nginx's upstream keepalive does), each sending mail
          auth_http requests (the params nginx sends for IMAP LOGIN) with a
          wrong password for the ARGON2ID user, from a random client address
          in 198.18.0.0/15 per request (so the per-address throttle never
          blocks: every request costs a verification)
  prober  every --probe-interval s, a login of the PLAIN user and one of the
          ARGON2ID user (right passwords, client 192.0.2.10, a fresh
          connection each), latency and answer recorded
  sampler VmHWM/VmRSS of the daemon every --sample s; a separate guard thread
          kills the daemon (SIGKILL) when VmRSS passes --rss-kill-mib, and
          that is a failure

When the flood stops (its connections are dropped at once, with whatever was
in flight), one PLAIN and one ARGON2ID login, retried every 100 ms for up to
5 s until OK. Then a verdict against issue 13's bars; exit status 1 if any
bar fails, 2 if the set-up itself failed.

Not part of the test suite. Stdlib only; one temp dir, removed at the end
(--keep keeps it; on failure the daemon log's tail is printed).

CAUTION: a daemon with no bound on concurrent Argon2 verifications spends
64 MiB per verification in flight (up to 512 blocking threads: 32 GiB). Try
such a binary with few connections, e.g. --connections 40 --seconds 5; the
--rss-kill-mib guard (default 4096) is there in case.

  tests/bench/flood [--connections 300] [--seconds 20] [--rss-kill-mib 4096]
  python3 tests/bench/flood.py --bin target/release/nginx-auth-fcgi --connections 40 --seconds 5
"""

import argparse
import asyncio
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

BEGIN, END, PARAMS, STDIN, STDOUT = 1, 3, 4, 5, 6
KEEP_CONN = 1

PLAIN = (b"alice@example.org", b"flood-plain-pw-4e1a")  # {PLAIN}
ARGON = (b"bob@example.org", b"flood-argon-pw-8b2c")  # {ARGON2ID}
WRONG_MARK = b"flood-wrong-"  # every wrong password starts with this
PROBE_IP = "192.0.2.10"
OK, TEMP, INVALID = "OK", "Temporary server problem, try again later", "Invalid login or password"
KIND = {OK: "ok", TEMP: "temporary", INVALID: "invalid"}
ANSWER_WITHIN = 30.0  # longest wait for one answer (the daemon's own limit is 10 s)
MIB = 1024


# ------------------------------------------------------------- FastCGI
# As tests/soak/driver.py.


def record(ty, rid, content=b""):
    padding = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBx", 1, ty, rid, len(content), padding) + content + b"\0" * padding


def enc_len(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def enc_pairs(items):
    return b"".join(enc_len(len(n)) + enc_len(len(v)) + n + v for n, v in items)


def request(rid, flags, items):
    return (record(BEGIN, rid, struct.pack(">HB5x", 1, flags))
            + record(PARAMS, rid, enc_pairs(items)) + record(PARAMS, rid) + record(STDIN, rid))


def mail(user, password, ip):
    """The params nginx passes for a mail auth_http request (IMAP LOGIN)."""
    return [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/mailauth"),
            (b"HTTP_AUTH_METHOD", b"plain"), (b"HTTP_AUTH_USER", user),
            (b"HTTP_AUTH_PASS", password), (b"HTTP_AUTH_PROTOCOL", b"imap"),
            (b"HTTP_AUTH_LOGIN_ATTEMPT", b"1"), (b"HTTP_CLIENT_IP", ip.encode())]


async def answer(reader, rid):
    """Reads up to END_REQUEST of `rid`: the kind of answer ("ok",
    "temporary", "invalid", "other: ..."), or "no-answer" (END without
    STDOUT). Raises on EOF."""
    out = bytearray()
    while True:
        head = await reader.readexactly(8)
        _, ty, r, length, padding = struct.unpack(">BBHHBx", head)
        body = await reader.readexactly(length + padding)
        if r != rid:
            continue
        if ty == STDOUT:
            out += body[:length]
        elif ty == END:
            break
    if not out:
        return "no-answer"
    head = bytes(out).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n"):
        if line.startswith("Auth-Status: "):
            status = line[len("Auth-Status: "):]
            return KIND.get(status, "other: " + status)
    return "other: " + head.replace("\r\n", " | ")[:80]


async def login(sock, user, password, ip):
    """One login on a fresh connection: (kind, seconds)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        writer.write(request(1, 0, mail(user, password, ip)))
        await writer.drain()
        kind = await asyncio.wait_for(answer(reader, 1), ANSWER_WITHIN)
    finally:
        writer.close()
    return kind, time.monotonic() - t0


async def login_kind(sock, user, password, ip):
    t0 = time.monotonic()
    try:
        return await login(sock, user, password, ip)
    except asyncio.TimeoutError:
        return "timeout", time.monotonic() - t0
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
        return "error: " + type(e).__name__, time.monotonic() - t0


# -------------------------------------------------------------- traffic


class Flood:
    def __init__(self, sock, rng):
        self.sock, self.rng = sock, rng
        self.sent = 0
        self.answered = 0
        self.kinds = {}
        self.reconnects = 0
        self.stop = False

    def ip(self):
        # 198.18.0.0/15 (RFC 2544 benchmarking), a new address per request.
        n = self.rng.getrandbits(17)
        return "198.%d.%d.%d" % (18 + (n >> 16), (n >> 8) & 255, n & 255)

    def note(self, kind):
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    async def connection(self):
        while not self.stop:
            try:
                reader, writer = await asyncio.open_unix_connection(self.sock)
            except (ConnectionError, OSError) as e:
                self.note("connect-error: " + type(e).__name__)
                await asyncio.sleep(0.1)
                continue
            try:
                while not self.stop:
                    pw = WRONG_MARK + b"%08x" % self.rng.getrandbits(32)
                    writer.write(request(1, KEEP_CONN, mail(ARGON[0], pw, self.ip())))
                    await writer.drain()
                    self.sent += 1
                    kind = await asyncio.wait_for(answer(reader, 1), ANSWER_WITHIN)
                    self.answered += 1
                    self.note(kind)
            except asyncio.TimeoutError:
                self.note("timeout")
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
                if not self.stop:
                    self.note("closed: " + type(e).__name__)
                    self.reconnects += 1
            finally:
                writer.transport.abort()


class Prober:
    def __init__(self, sock, name, user, password):
        self.sock, self.name, self.user, self.password = sock, name, user, password
        self.results = []  # (t, kind, seconds)
        self.tasks = []

    async def one(self, t):
        kind, secs = await login_kind(self.sock, self.user, self.password, PROBE_IP)
        self.results.append((t, kind, secs))

    async def run(self, start, stop_at, interval, alive):
        tick = time.monotonic()
        while time.monotonic() < stop_at and alive():
            self.tasks.append(asyncio.ensure_future(self.one(time.monotonic() - start)))
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))

    def kinds(self):
        out = {}
        for _, k, _ in self.results:
            out[k] = out.get(k, 0) + 1
        return out


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))]


# ------------------------------------------------------------- the daemon


def proc_status(pid):
    """{field: kB} of VmRSS/VmHWM, or None once the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            out = {}
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
            # A zombie (killed, not yet reaped) has no Vm* lines.
            return out if "VmRSS" in out else None
    except (FileNotFoundError, ProcessLookupError):
        return None


class Guard(threading.Thread):
    """Kills the daemon when its VmRSS passes the limit; also keeps the peaks.
    A thread of its own, so a busy event loop cannot delay it."""

    def __init__(self, proc, limit_kib, every=0.05):
        super().__init__(daemon=True)
        self.proc, self.limit, self.every = proc, limit_kib, every
        self.peak_rss = 0
        self.peak_hwm = 0
        self.peak_threads = 0
        self.killed_at = None  # VmRSS kB that made us kill it
        self.killed_when = None  # time.monotonic() of the kill
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set() and self.proc.poll() is None:
            st = proc_status(self.proc.pid)
            if st is None:
                break
            self.peak_rss = max(self.peak_rss, st.get("VmRSS", 0))
            self.peak_hwm = max(self.peak_hwm, st.get("VmHWM", 0))
            self.peak_threads = max(self.peak_threads, st.get("Threads", 0))
            if st.get("VmRSS", 0) > self.limit:
                self.killed_at = st["VmRSS"]
                self.killed_when = time.monotonic()
                self.proc.kill()
                break
            self.halt.wait(self.every)


def argon2id_hash(password):
    out = subprocess.run(["doveadm", "pw", "-s", "ARGON2ID", "-p", password.decode()],
                         capture_output=True, check=True)
    h = out.stdout.strip()
    if not h.startswith(b"{ARGON2ID}$argon2id$"):
        raise SystemExit("unexpected doveadm pw output: %r" % h)
    return h


def start_daemon(binary, tmp, extra):
    """The daemon and its socket; SystemExit (set-up failure) if it does not start."""
    users = os.path.join(tmp, "users.passwd")
    argon = argon2id_hash(ARGON[1])
    with open(users, "wb") as f:
        f.write(PLAIN[0] + b":{PLAIN}" + PLAIN[1] + b"::::::\n")
        f.write(ARGON[0] + b":" + argon + b"::::::\n")
    sock = os.path.join(tmp, "auth.sock")
    log = open(os.path.join(tmp, "daemon.log"), "wb")
    proc = subprocess.Popen([binary, "serve", "--listen", "unix:" + sock,
                             "--passdb", "passwd-file:" + users,
                             "--upstream", "imap=127.0.0.1:1143", "--log", "stderr"] + extra,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("daemon did not start:\n" + read_log(tmp))
        time.sleep(0.05)
    return proc, sock, argon.split(b"$")[3].decode()


def read_log(tmp):
    with open(os.path.join(tmp, "daemon.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


def serve_options(binary):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True).stdout.decode("utf-8", "replace")
    return [o for o in ("--verify-concurrency", "--verify-queue") if o in out]


# ------------------------------------------------------------------ run


async def until_ok(sock, user, password, within=5.0, every=0.1):
    """Logins every `every` s until OK or `within` s: (first kind, first
    latency, seconds until OK or None, attempts)."""
    t0 = time.monotonic()
    first = None
    attempts = 0
    while True:
        attempts += 1
        kind, secs = await login_kind(sock, user, password, PROBE_IP)
        if first is None:
            first = (kind, secs)
        if kind == "ok":
            return first[0], first[1], time.monotonic() - t0, attempts
        if time.monotonic() - t0 >= within:
            return first[0], first[1], None, attempts
        await asyncio.sleep(every)


async def run(args, proc, sock, guard):
    alive = lambda: proc.poll() is None
    # The set-up must be right before anything is measured.
    for (user, pw), want in ((PLAIN, "ok"), (ARGON, "ok"), ((ARGON[0], WRONG_MARK + b"x"), "invalid")):
        kind, secs = await login_kind(sock, user, pw, "192.0.2.11")
        if kind != want:
            raise SystemExit("set-up check: %s answered %s, not %s" % (user.decode(), kind, want))

    flood = Flood(sock, random.Random(args.seed))
    probers = [Prober(sock, "PLAIN", *PLAIN), Prober(sock, "ARGON2ID", *ARGON)]
    start = time.monotonic()
    stop_at = start + args.seconds
    workers = [asyncio.ensure_future(flood.connection()) for _ in range(args.connections)]
    probe_runs = [asyncio.ensure_future(p.run(start, stop_at, args.probe_interval, alive)) for p in probers]

    print("%5s %9s %9s %8s %8s %7s %12s %12s" % ("t/s", "sent", "answered", "VmRSS/M", "VmHWM/M",
                                                  "threads", "PLAIN ok/n", "ARGON ok/n"), flush=True)
    samples = []
    next_print = start + 1.0
    while time.monotonic() < stop_at and alive():
        await asyncio.sleep(args.sample)
        st = proc_status(proc.pid)
        if st is None or not alive():
            break
        now = time.monotonic()
        samples.append((now - start, st["VmRSS"], st["VmHWM"]))
        if now >= next_print:
            next_print += 1.0
            p, a = probers
            print("%5.1f %9d %9d %8.0f %8.0f %7d %12s %12s" % (
                now - start, flood.sent, flood.answered, st["VmRSS"] / MIB, st["VmHWM"] / MIB,
                st.get("Threads", 0),
                "%d/%d" % (p.kinds().get("ok", 0), len(p.results)),
                "%d/%d" % (a.kinds().get("ok", 0), len(a.results))), flush=True)
    flood_secs = time.monotonic() - start

    # The flood stops: its connections go at once, in-flight requests with them.
    flood.stop = True
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.gather(*probe_runs, return_exceptions=True)

    after = {}
    if alive():  # both at once, right away
        got = await asyncio.gather(until_ok(sock, *PLAIN), until_ok(sock, *ARGON))
        after = dict(zip(("PLAIN", "ARGON2ID"), got))
    # Probes still waiting for their answer when the flood stopped.
    for p in probers:
        await asyncio.gather(*p.tasks, return_exceptions=True)
    st = proc_status(proc.pid) if alive() else None
    return flood, probers, samples, flood_secs, after, st, start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the nginx-auth-fcgi binary")
    ap.add_argument("--connections", type=int, default=300, help="flood connections (default 300)")
    ap.add_argument("--seconds", type=float, default=20, help="flood duration (default 20)")
    ap.add_argument("--probe-interval", type=float, default=0.1, help="seconds between probes per user (0.1)")
    ap.add_argument("--sample", type=float, default=0.2, help="seconds between memory samples (0.2)")
    ap.add_argument("--rss-kill-mib", type=int, default=4096,
                    help="kill the daemon when its VmRSS passes this (MiB, default 4096)")
    ap.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                    help="extra `serve` argument, repeatable (e.g. --daemon-arg=--cache-ttl-secs=0 "
                         "so the ARGON2ID probes are verified, not cache hits)")
    ap.add_argument("--seed", type=int, default=1313)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (users, daemon log)")
    args = ap.parse_args()

    opts = serve_options(args.bin)
    version = subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print("binary: %s (%s)" % (args.bin, version.strip() or "?"))
    print("serve options for bounding verifications: %s (left at their defaults)"
          % (", ".join(opts) if opts else "none listed (no --verify-concurrency / --verify-queue)"))

    tmp = tempfile.mkdtemp(prefix="nginx-auth-fcgi-flood.")
    proc = None
    guard = None
    finished = False
    try:
        proc, sock, params = start_daemon(args.bin, tmp, args.daemon_arg)
        print("daemon pid %d; ARGON2ID %s; flood %d connections × %.0f s; probes every %.0f ms; "
              "RSS guard %d MiB; %d CPUs" % (proc.pid, params, args.connections, args.seconds,
                                             args.probe_interval * 1000, args.rss_kill_mib, os.cpu_count()))
        if args.daemon_arg:
            print("extra serve arguments: " + " ".join(args.daemon_arg))
        print()
        guard = Guard(proc, args.rss_kill_mib * MIB)
        guard.start()
        flood, probers, samples, flood_secs, after, st_end, start = asyncio.run(run(args, proc, sock, guard))
        finished = True
    finally:
        if guard is not None:
            guard.halt.set()
            guard.join()
        alive = proc is not None and proc.poll() is None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not finished:  # set-up failure or Ctrl-C
            if args.keep:
                print("flood: kept %s" % tmp, file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)

    log = read_log(tmp)
    plain, argon = probers
    hwm = max([guard.peak_hwm] + [s[2] for s in samples] + ([st_end["VmHWM"]] if st_end else []))

    print()
    print("flood: %d sent, %d answered in %.1f s (%.1f answers/s), %d in flight when it stopped, %d reconnects"
          % (flood.sent, flood.answered, flood_secs, flood.answered / max(flood_secs, 1e-9),
             flood.sent - flood.answered, flood.reconnects))
    print("flood answers by kind: " + (", ".join("%s=%d" % kv for kv in sorted(flood.kinds.items())) or "none"))
    lat = [s * 1000 for _, k, s in plain.results if k == "ok"]
    print("PLAIN probes: %d, OK %d; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms (of the OK ones); by kind: %s"
          % (len(plain.results), plain.kinds().get("ok", 0), percentile(lat, 50), percentile(lat, 99),
             max(lat) if lat else float("nan"), ", ".join("%s=%d" % kv for kv in sorted(plain.kinds().items()))))
    alat = [s * 1000 for _, _, s in argon.results]
    print("ARGON2ID probes: %d; by kind: %s; latency p50 %.0f ms, p99 %.0f ms, max %.0f ms"
          % (len(argon.results), ", ".join("%s=%d" % kv for kv in sorted(argon.kinds().items())) or "none",
             percentile(alat, 50), percentile(alat, 99), max(alat) if alat else float("nan")))
    print("daemon memory: peak VmHWM %.0f MiB, peak VmRSS seen %.0f MiB, peak threads %d"
          % (hwm / MIB, guard.peak_rss / MIB, guard.peak_threads))
    for name in ("PLAIN", "ARGON2ID"):
        if name in after:
            kind, secs, until, attempts = after[name]
            print("after the flood, %s: first login %s in %.1f ms; %s" % (
                name, kind, secs * 1000,
                "OK after %.1f ms (%d attempt%s)" % (until * 1000, attempts, "" if attempts == 1 else "s")
                if until is not None else "not OK within 5 s (%d attempts)" % attempts))
        else:
            print("after the flood, %s: not tried (daemon gone)" % name)
    # The audit log (one line per decision; OK lines are info, the default).
    audit = [line for line in log.splitlines() if " auth result=" in line]
    flood_lines = [line for line in audit if " ip=198.18." in line or " ip=198.19." in line]
    flood_ok = sum(" auth result=ok " in line for line in flood_lines)
    flood_hit = sum(" cache=hit" in line for line in flood_lines)
    argon_ok = [line for line in audit if " ip=%s " % PROBE_IP in line and " user=%s " % ARGON[0].decode() in line
                and " auth result=ok " in line]
    argon_hits = sum(" cache=hit" in line for line in argon_ok)
    print("audit log: %d flood decisions (%d result=ok, %d cache=hit); ARGON2ID OKs from %s (probes and "
          "after): %d, %d of them cache=hit%s"
          % (len(flood_lines), flood_ok, flood_hit, PROBE_IP, len(argon_ok), argon_hits,
             " (the set-up check's login filled the verification cache; --daemon-arg=--cache-ttl-secs=0 "
             "to verify every time)" if argon_hits else ""))
    leaked = [p.decode() for p in (PLAIN[1], ARGON[1], WRONG_MARK) if p.decode() in log]
    if leaked:
        print("passwords in the daemon log: %d" % len(leaked))

    # Issue 13's bars.
    bars = []

    def bar(ok, what):
        bars.append(ok)
        print("  %-4s %s" % ("ok" if ok else "FAIL", what))

    print()
    print("verdict (issue 13):")
    if guard.killed_at is not None:
        t = guard.killed_when - start
        bar(False, "daemon alive: KILLED by the guard at VmRSS %.0f MiB > %d MiB, t=%.1f s (%s)"
            % (guard.killed_at / MIB, args.rss_kill_mib, t,
               "during the flood" if t < flood_secs else "after the flood stopped, %.1f s in" % (t - flood_secs)))
    else:
        bar(alive, "daemon alive" + ("" if alive else ": it DIED (log tail below)"))
    bar(hwm <= 1024 * MIB, "VmHWM <= 1 GiB (peak %.0f MiB)" % (hwm / MIB))
    p_ok = plain.kinds().get("ok", 0)
    p99 = percentile(lat, 99)
    bar(plain.results and p_ok == len(plain.results) and p99 <= 250,
        "every PLAIN probe OK (%d/%d) and p99 <= 250 ms (%.1f ms)" % (p_ok, len(plain.results), p99))
    bad = {k: n for k, n in argon.kinds().items() if k not in ("ok", "temporary")}
    bar(bool(argon.results) and not bad, "ARGON2ID probes OK or temporary, never invalid (%s)"
        % (", ".join("%s=%d" % kv for kv in sorted(argon.kinds().items())) or "no probes"))
    bar(flood.kinds.get("ok", 0) == 0 and flood_ok == 0 and flood_hit == 0,
        "no flood answer OK (%d answers, %d audit lines ok, %d cache hits)"
        % (flood.kinds.get("ok", 0), flood_ok, flood_hit))
    both = all(name in after and after[name][2] is not None for name in ("PLAIN", "ARGON2ID"))
    bar(both, "both users OK right after the flood (within 5 s)")
    bar(not leaked and "panicked" not in log, "no password and no panic in the daemon log")
    failed = not all(bars)
    if not alive or failed:
        print()
        print("daemon log tail:")
        print("\n".join("  " + line for line in log.splitlines()[-15:]))
    if args.keep:
        print("kept %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("verdict: %s" % ("PASS" if not failed else "FAIL"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print("flood: " + e.code, file=sys.stderr)
            sys.exit(2)
        raise
