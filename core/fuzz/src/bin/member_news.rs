fn main() {
    afl::fuzz!(|data: &[u8]| quicether_fuzz::member_news(data));
}
