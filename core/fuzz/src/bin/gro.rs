fn main() {
    afl::fuzz!(|data: &[u8]| quicether_fuzz::gro(data));
}
