fn main() {
    afl::fuzz!(|data: &[u8]| quicether_fuzz::lane(data));
}
