"""An independent QUIC peer built on aioquic, to prove a QuicEther node speaks standard QUIC (RFC 9000/9221).

    python -m tests.lab.aioquic_peer --seed-file F --server 10.1.0.2:4433 --src 10.99.0.3 --dst 10.99.0.2

Connects with an Ed25519 client certificate made from the seed, sends the path hello on a stream (as a
QuicEther dialer does), then an ICMP echo request from `src` to `dst` inside a QUIC DATAGRAM frame with the
bond header, and prints one JSON line: the server's node key as seen in its certificate, whether the hello
was answered, and whether an ICMP echo reply came back in a DATAGRAM frame.

Frame format (see core/proto/src/frame.rs): DATA = 0x01 | seq u64 BE | gap u32 BE (0: none) | IP packet;
PROBE = 0x02 | id u32 | next_seq u64; PROBE_REPLY = 0x03 | id u32; NACK = 0x04 | count u16 | seqs.
Path hello: b"QEH1" | backup flag | WAN name, answered with b"ok <address the acceptor sees us at>".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import socket
import ssl
import struct
import sys
import tempfile
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, ident: int = 0x5145, seq: int = 1) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"quicether-interop"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0x4000, 64, 1, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


DATA, PROBE, PROBE_REPLY = 0x01, 0x02, 0x03
DATA_HEADER_LEN = 13


class Peer(QuicConnectionProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()
        self.hello_answer = b""
        self.hello_done = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.hello_answer += event.data
            if event.end_stream:
                self.hello_done.set()
        elif isinstance(event, DatagramFrameReceived) and event.data:
            kind = event.data[0]
            if kind == DATA:
                self.datagrams.put_nowait(event.data[DATA_HEADER_LEN:])
            elif kind == PROBE:  # answer health probes like a node does
                self._quic.send_datagram_frame(bytes([PROBE_REPLY]) + event.data[1:5])
                self.transmit()


def _write_cert(seed: bytes, directory: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aioquic-peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, None))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def run(seed: bytes, host: str, port: int, src: str, dst: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = _write_cert(seed, Path(tmp))
        config = QuicConfiguration(is_client=True, alpn_protocols=["quicether/1"], max_datagram_frame_size=65536,
                                   server_name="quicether")
        # The node's certificate is self-signed: trust comes from comparing its key, checked below.
        config.verify_mode = ssl.CERT_NONE
        config.load_cert_chain(cert_path, key_path)
        async with connect(host, port, configuration=config, create_protocol=Peer, wait_connected=True) as client:
            peer = client  # type: ignore[assignment]
            assert isinstance(peer, Peer)
            server_cert = peer._quic.tls._peer_certificate
            server_key = server_cert.public_key().public_bytes(serialization.Encoding.Raw,
                                                               serialization.PublicFormat.Raw)
            stream = peer._quic.get_next_available_stream_id()
            peer._quic.send_stream_data(stream, b"QEH1\x00aioquic", end_stream=True)
            peer.transmit()
            await asyncio.wait_for(peer.hello_done.wait(), 5)
            reply = None
            for seq in range(10):
                peer._quic.send_datagram_frame(bytes([DATA]) + struct.pack("!QI", seq, 0) + echo_request(src, dst))
                peer.transmit()
                try:
                    reply = await asyncio.wait_for(peer.datagrams.get(), 0.5)
                    break
                except TimeoutError:
                    continue
    got_reply = reply is not None and reply[9] == 1 and reply[20] == 0  # ICMP echo reply
    return {"server_key": base64.b64encode(server_key).decode(), "hello_answer": peer.hello_answer.decode(),
            "echo_reply": got_reply,
            "reply_src": socket.inet_ntoa(reply[12:16]) if reply else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-file", required=True, help="file with the 32-byte Ed25519 seed in base64")
    parser.add_argument("--server", required=True, help="node address host:port")
    parser.add_argument("--src", required=True, help="inner source address (one of our allowed IPs)")
    parser.add_argument("--dst", required=True, help="inner destination (the node's overlay address)")
    args = parser.parse_args()
    seed = base64.b64decode(Path(args.seed_file).read_text().strip())
    host, _, port = args.server.rpartition(":")
    print(json.dumps(asyncio.run(run(seed, host, int(port), args.src, args.dst))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
