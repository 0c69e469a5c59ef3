//! `qe-delayline --tun NAME [--delay-us N] [--jitter-us N]`: runs a delay line on an existing TUN device.
//!
//! Prints `ready` once attached. Reads commands on stdin, one per line: `set <delay_us> <jitter_us>`
//! changes the delay for packets arriving from then on and answers `ok`; `stats` answers one JSON line
//! of counters (packets, bytes, dropped, queued, delay_us, jitter_us). Exits on EOF or SIGTERM.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use quicether_labtools::delayline::{DelayLine, DelaySettings};

struct Args {
    tun: String,
    settings: DelaySettings,
}

fn parse_args() -> Result<Args, String> {
    let mut tun = None;
    let mut settings = DelaySettings::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--tun" => tun = Some(value()?),
            "--delay-us" => settings.delay_us = value()?.parse().map_err(|_| "--delay-us: not a number")?,
            "--jitter-us" => settings.jitter_us = value()?.parse().map_err(|_| "--jitter-us: not a number")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args { tun: tun.ok_or("--tun is required")?, settings })
}

/// Answers one command line; None for an empty line.
fn answer(line: &DelayLine, command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        [] => None,
        ["set", delay, jitter] => Some(match (delay.parse(), jitter.parse()) {
            (Ok(delay_us), Ok(jitter_us)) => {
                line.set(DelaySettings { delay_us, jitter_us });
                "ok".to_string()
            }
            _ => format!("error: set needs two numbers, got {:?}", command.trim()),
        }),
        ["stats"] => {
            let (s, cfg) = (line.stats(), line.settings());
            Some(format!(
                r#"{{"packets": {}, "bytes": {}, "dropped": {}, "queued": {}, "delay_us": {}, "jitter_us": {}}}"#,
                s.packets, s.bytes, s.dropped, s.queued, cfg.delay_us, cfg.jitter_us
            ))
        }
        _ => Some(format!("error: unknown command {:?}", command.trim())),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("qe-delayline: {e}");
            return ExitCode::from(2);
        }
    };
    let line = match DelayLine::start(&args.tun, args.settings) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qe-delayline: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = io::stdout().lock();
    if writeln!(out, "ready").and_then(|_| out.flush()).is_err() {
        return ExitCode::from(1);
    }
    for command in io::stdin().lock().lines() {
        let Ok(command) = command else { break };
        if let Some(reply) = answer(&line, &command) {
            if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    }
    ExitCode::SUCCESS
}
