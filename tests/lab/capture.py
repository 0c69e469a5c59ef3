"""A packet capture for lab namespaces where tcpdump is not installed: every frame on every interface of
the namespace it runs in (an AF_PACKET socket, as tcpdump uses), searched for a marker.

    python -m tests.lab.capture --marker 5145... --seconds 20 --out result.json
        capture for `seconds` (or until SIGTERM), then write {"frames", "bytes", "udp_bytes", "marked"}:
        frames and bytes seen, bytes of IPv4 UDP frames, and how many frames held the marker (hex)
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import time

ETH_P_ALL = 0x0003
SNAP_LEN = 65535


def capture(marker: bytes, seconds: float) -> dict[str, int]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.settimeout(0.2)
    counts = {"frames": 0, "bytes": 0, "udp_bytes": 0, "marked": 0}
    stop = time.monotonic() + seconds
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while time.monotonic() < stop:
            try:
                frame = sock.recv(SNAP_LEN)
            except TimeoutError:
                continue
            counts["frames"] += 1
            counts["bytes"] += len(frame)
            # Ethernet (14 bytes) + IPv4 with protocol UDP (17): the QUIC packets the relay handles.
            if len(frame) > 23 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
                counts["udp_bytes"] += len(frame)
            if marker in frame:
                counts["marked"] += 1
    except KeyboardInterrupt:
        pass
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--marker", required=True, help="hex")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    counts = capture(bytes.fromhex(args.marker), args.seconds)
    with open(args.out, "w") as out:
        json.dump(counts, out)


if __name__ == "__main__":
    main()
