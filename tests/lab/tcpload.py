"""Many TCP connections at once, for the TCP lane's tests. Each connection asks the server with 16 bytes: a
seed and a length (0: endless). The server sends that many bytes of the seed's pattern; the client checks
them.

    python -m tests.lab.tcpload serve --port 9000
    python -m tests.lab.tcpload check --to 10.0.0.5:9000 --count 500 --size 65536 [--hold 3]
    python -m tests.lab.tcpload stall --to 10.0.0.5:9000 --count 50
    python -m tests.lab.tcpload reset --to 10.0.0.5:9000 --size 1048576

`check` opens all its connections at once, reads and checks each one's bytes, keeps them all open `--hold`
seconds once every one has its bytes (so they are open together), then prints "ok <count>" or, per failed
connection, what went wrong (and exits 1). `stall` opens its connections asking for endless data, prints
"connected <count>" and never reads: the sender is held back only by flow control along the way.
`reset` asks for --size bytes with `RESET_AFTER` set: the server sends them, waits until they are
acknowledged, and then resets the connection (a server that fails mid-stream). It reads until the end and
prints "reset after <n> bytes" or, where the connection ended cleanly instead, "end after <n> bytes"
("wrong bytes, then ..." if what it got is not the start of what was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import random
import socket
import struct
import sys
import termios

CHUNK = 64 * 1024
# Set in the length: send the bytes, then reset the connection instead of closing it.
RESET_AFTER = 1 << 63


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        seed, size = struct.unpack("!QQ", await reader.readexactly(16))
        if size & RESET_AFTER:
            writer.write(pattern(seed, size & ~RESET_AFTER))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            await _acknowledged(sock)  # a reset drops what the send buffer still holds
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if size:
            writer.write(pattern(seed, size))
            await writer.drain()
        else:
            endless = pattern(seed, CHUNK)
            while True:
                writer.write(endless)
                await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _acknowledged(sock: socket.socket, timeout_s: float = 10.0) -> None:
    """Until the kernel has sent everything `sock` was given and the peer acknowledged it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if unacked == 0:
            return
        await asyncio.sleep(0.01)


async def serve(port: int) -> None:
    server = await asyncio.start_server(_serve_one, port=port, backlog=2048)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def _check_one(host: str, port: int, seed: int, size: int, all_read: asyncio.Event,
                     hold_s: float, done: list[int]) -> str | None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(struct.pack("!QQ", seed, size))
        await writer.drain()
        got = await reader.readexactly(size)
    except (OSError, asyncio.IncompleteReadError) as exc:
        return f"connection {seed}: {exc!r}"
    if got != pattern(seed, size):
        return f"connection {seed}: wrong bytes"
    done[0] += 1
    await all_read.wait()
    await asyncio.sleep(hold_s)
    writer.close()
    return None


async def check(host: str, port: int, count: int, size: int, hold_s: float) -> int:
    all_read = asyncio.Event()
    done = [0]
    tasks = [asyncio.create_task(_check_one(host, port, seed, size, all_read, hold_s, done)) for seed in range(count)]
    while done[0] < count and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    if done[0] == count:
        print(f"all read {count}", flush=True)
    all_read.set()
    failures = [f for f in await asyncio.gather(*tasks) if f is not None]
    for failure in failures:
        print(failure)
    if not failures:
        print(f"ok {count}")
    return 1 if failures else 0


async def stall(host: str, port: int, count: int) -> None:
    connections = []
    for seed in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(struct.pack("!QQ", seed, 0))
        await writer.drain()
        connections.append((reader, writer))
    print(f"connected {count}", flush=True)
    await asyncio.Event().wait()


async def reset(host: str, port: int, size: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(struct.pack("!QQ", 0, size | RESET_AFTER))
    await writer.drain()
    got = bytearray()
    verdict = "end"
    try:
        while chunk := await reader.read(CHUNK):
            got += chunk
    except ConnectionResetError:
        verdict = "reset"
    if got != pattern(0, size)[:len(got)]:
        verdict = "wrong bytes, then " + verdict
    print(f"{verdict} after {len(got)} bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="answer connections on --port")
    serve_p.add_argument("--port", type=int, required=True)
    for name in ("check", "stall"):
        p = sub.add_parser(name, help=f"{name} connections to --to host:port")
        p.add_argument("--to", required=True)
        p.add_argument("--count", type=int, required=True)
        if name == "check":
            p.add_argument("--size", type=int, default=CHUNK)
            p.add_argument("--hold", type=float, default=0.0)
    reset_p = sub.add_parser("reset", help="one connection to --to host:port that the server resets after --size bytes")
    reset_p.add_argument("--to", required=True)
    reset_p.add_argument("--size", type=int, default=CHUNK)
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.port))
        return
    host, _, port = args.to.rpartition(":")
    if args.command == "check":
        sys.exit(asyncio.run(check(host, int(port), args.count, args.size, args.hold)))
    if args.command == "reset":
        asyncio.run(reset(host, int(port), args.size))
        return
    asyncio.run(stall(host, int(port), args.count))


if __name__ == "__main__":
    main()
