//! `qe-flood --target IP:PORT --mode garbage|handshakes|replay|dht-queries|dht-store [--seconds S] [--rate PPS] [--concurrency N]
//! [--server-key HEX] [--bind IP]`: floods a node's QUIC or DHT port (quicether_labtools::flood) and prints one JSON line of
//! what it sent: {"datagrams": …, "handshakes": …, "accepted": …, "errors": …} (the last two: the
//! node's answers to dht-store).

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use quicether_labtools::flood::{run, Flood, Mode};

fn hex32(text: &str) -> Result<[u8; 32], String> {
    let bytes: Result<Vec<u8>, _> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16)).collect();
    bytes.ok().and_then(|b| b.try_into().ok()).ok_or_else(|| "--server-key: 64 hex digits".to_string())
}

fn parse_args() -> Result<Flood, String> {
    let mut flood = Flood {
        mode: Mode::Garbage,
        target: "127.0.0.1:4433".parse().unwrap(),
        seconds: 10.0,
        rate: 20_000,
        concurrency: 32,
        server_key: [0; 32],
        bind: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => flood.target = value()?.parse().map_err(|_| "--target: IP:PORT")?,
            "--mode" => flood.mode = value()?.parse()?,
            "--seconds" => flood.seconds = value()?.parse().map_err(|_| "--seconds: a number")?,
            "--rate" => flood.rate = value()?.parse().map_err(|_| "--rate: datagrams per second")?,
            "--concurrency" => flood.concurrency = value()?.parse().map_err(|_| "--concurrency: a number")?,
            "--server-key" => flood.server_key = hex32(&value()?)?,
            "--bind" => flood.bind = Some(value()?.parse().map_err(|_| "--bind: an IP address")?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if flood.rate == 0 || flood.concurrency == 0 {
        return Err("--rate and --concurrency must be above 0".into());
    }
    Ok(flood)
}

fn main() -> ExitCode {
    let flood = match parse_args() {
        Ok(flood) => flood,
        Err(e) => {
            eprintln!(
                "{}usage: qe-flood --target IP:PORT --mode garbage|handshakes|replay|dht-queries|dht-store [--seconds S] \
                       [--rate PPS] \
                       [--concurrency N] [--server-key HEX] [--bind IP]",
                if e.is_empty() { String::new() } else { format!("qe-flood: {e}\n") }
            );
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    let sent = match run(&flood) {
        Ok(sent) => sent,
        Err(e) => {
            eprintln!("qe-flood: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{{\"datagrams\": {}, \"handshakes\": {}, \"accepted\": {}, \"errors\": {}}}",
        sent.datagrams.load(Ordering::Relaxed),
        sent.handshakes.load(Ordering::Relaxed),
        sent.accepted.load(Ordering::Relaxed),
        sent.errors.load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}
