"""The running daemon: wiring of config, core node, links and the local API."""
