//! Fuzz the agent's reader of worker responses (function output is untrusted).
#![no_main]

use husk_agent::worker::read_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cur = std::io::Cursor::new(data);
    while let Ok(r) = read_response(&mut cur, 1024) {
        assert!(r.body.len() <= 1024);
    }
});
