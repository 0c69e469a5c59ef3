"""Runs the core's fuzz targets (core/fuzz/src/bin, one per decoder of what the network sends) with
AFL++ through cargo-afl, one after the other, each for --seconds, starting from core/fuzz/corpus/<target>
(the seeds `cargo run --bin seeds` writes, and what earlier runs found). Prints executions, speed, the
corpus size and crashes per target. The inputs that reached new coverage are added to the corpus
unless --no-save; a crashing input is copied to tests/artifacts/fuzz/ and the run fails.

cargo-afl (and the AFL++ it builds) is installed on first use from crates.io.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "core" / "fuzz"
ARTIFACTS = ROOT / "tests" / "artifacts" / "fuzz"
CARGO_AFL_VERSION = "0.18.2"  # matches the afl crate in core/fuzz/Cargo.lock
AFL_ENV = {
    "AFL_SKIP_CPUFREQ": "1",                       # a shared machine's CPU governor is not ours to set
    "AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES": "1",  # crashes are seen by the fuzzer, not by a core dump
    "AFL_NO_UI": "1",
    "AFL_NO_AFFINITY": "1",
}
# Per-execution limit (ms): every decoder answers in microseconds; AFL's own guess from the first runs is
# too tight on a loaded machine, where a dry run counted as a hang aborts the whole run.
EXEC_TIMEOUT_MS = "1000"


def targets() -> list[str]:
    return sorted(p.stem for p in (FUZZ / "src" / "bin").glob("*.rs") if p.stem != "seeds")


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=FUZZ, check=True)


def ensure_cargo_afl() -> None:
    probe = subprocess.run(["cargo", "afl", "--version"], capture_output=True, text=True, check=False)
    if probe.returncode == 0 and CARGO_AFL_VERSION in probe.stdout:
        return
    print(f"==> installing cargo-afl {CARGO_AFL_VERSION} (builds AFL++; a minute or two, once)", flush=True)
    run(["cargo", "install", "--quiet", "--locked", "cargo-afl", "--version", CARGO_AFL_VERSION])


def stats(out: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    path = out / "default" / "fuzzer_stats"
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            found[key.strip()] = value.strip()
    return found


def fuzz_one(target: str, seconds: int, work: Path, save: bool) -> tuple[dict[str, str], list[Path]]:
    """Runs `target` for `seconds`; returns AFL's statistics and the crashing inputs it saved."""
    corpus = FUZZ / "corpus" / target
    out = work / target
    binary = FUZZ / "target" / "release" / target
    cmd = ["cargo", "afl", "fuzz", "-t", EXEC_TIMEOUT_MS, "-V", str(seconds), "-i", str(corpus), "-o", str(out),
           str(binary)]
    done = subprocess.run(cmd, cwd=FUZZ, env={**os.environ, **AFL_ENV}, capture_output=True, text=True, check=False,
                          timeout=seconds + 120)
    if done.returncode != 0:  # AFL++ says why on its last lines (a seed that hangs, no shared memory …)
        tail = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-6:]
        raise SystemExit(f"afl-fuzz on {target} failed ({done.returncode}):\n" + "\n".join(tail))
    crashes = sorted(p for p in (out / "default" / "crashes").glob("id:*"))
    if save and not crashes:
        # AFL queues an input only for coverage the run had not seen (the corpus it started from included):
        # those are what the corpus gains, named by content so a second run adds no copies.
        existing = {f.read_bytes() for f in corpus.iterdir() if f.is_file()}
        for f in (out / "default" / "queue").glob("id:*"):
            data = f.read_bytes()
            if data not in existing:
                (corpus / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
                existing.add(data)
    return stats(out), crashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="how long each target runs (default %(default)s)")
    parser.add_argument("--targets", help=f"comma-separated, from: {', '.join(targets())} (default: all)")
    parser.add_argument("--no-save", action="store_true", help="leave core/fuzz/corpus as it is")
    args = parser.parse_args()
    chosen = args.targets.split(",") if args.targets else targets()
    unknown = sorted(set(chosen) - set(targets()))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; there are {', '.join(targets())}")
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    ensure_cargo_afl()
    print("==> building the fuzz targets (cargo afl build --release)", flush=True)
    run(["cargo", "afl", "build", "--release", "--quiet"])
    run(["cargo", "run", "--release", "--quiet", "--bin", "seeds"])
    failed = []
    with tempfile.TemporaryDirectory(prefix="qe-fuzz-") as tmp:
        print(f"{'target':<14}{'executions':>12}{'per s':>9}{'corpus':>8}{'crashes':>9}", flush=True)
        for target in chosen:
            found, crashes = fuzz_one(target, args.seconds, Path(tmp), save=not args.no_save)
            print(f"{target:<14}{found.get('execs_done', '?'):>12}{found.get('execs_per_sec', '?'):>9}"
                  f"{found.get('corpus_count', '?'):>8}{len(crashes):>9}", flush=True)
            if crashes:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                for crash in crashes:
                    shutil.copy(crash, ARTIFACTS / f"{target}-{crash.name.replace(':', '_').replace(',', '_')}")
                failed.append(target)
    if failed:
        print(f"crashes in {', '.join(failed)}: inputs in {ARTIFACTS} (replay: cat FILE | "
              f"core/fuzz/target/release/TARGET)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
