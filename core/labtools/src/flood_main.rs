//! `qe-flood --target IP:PORT --mode garbage|handshakes|replay [--seconds S] [--rate PPS] [--concurrency N]
//! [--server-key HEX]`: floods a node's QUIC port (quicether_labtools::flood) and prints one JSON line of
//! what it sent: {"datagrams": …, "handshakes": …}.

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
                "{}usage: qe-flood --target IP:PORT --mode garbage|handshakes|replay [--seconds S] [--rate PPS] \
                       [--concurrency N] [--server-key HEX]",
                if e.is_empty() { String::new() } else { format!("qe-flood: {e}\n") }
            );
            return if e.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
    };
    let sent = run(&flood);
    println!(
        "{{\"datagrams\": {}, \"handshakes\": {}}}",
        sent.datagrams.load(Ordering::Relaxed),
        sent.handshakes.load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}
