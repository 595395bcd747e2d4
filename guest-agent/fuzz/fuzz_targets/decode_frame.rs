//! Fuzz the agent frame decoder: arbitrary bytes must give a message or an error, never
//! a panic, and whatever decodes must re-encode to the same frame.
#![no_main]

use husk_agent::protocol::{Codec, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(Limits {
        payload_limit: 64 * 1024,
    });
    if let Ok((msg, used)) = codec.decode(data) {
        let again = codec.encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(&again[..], &data[..used]);
    }
    // The streaming reader must agree with the buffer decoder on success.
    let mut cur = std::io::Cursor::new(data);
    if let Ok(msg) = codec.read_frame(&mut cur) {
        assert_eq!(codec.decode(data).map(|(m, _)| m).ok(), Some(msg));
    }
});
