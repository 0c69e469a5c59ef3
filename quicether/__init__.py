"""QuicEther: bond every WAN port through multipath QUIC into one link to your own gateway."""

__version__ = "0.1.0"
