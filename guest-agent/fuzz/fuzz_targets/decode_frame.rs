//! Fuzz the agent frame decoder: arbitrary bytes must give a message or an error, never
//! a panic. Whatever decodes must re-encode to a frame that decodes to the same message
//! (byte equality with the input does not hold: unknown optional extension fields are
//! skipped on decode), and encoding is canonical from there on.
#![no_main]

use husk_agent::protocol::{Codec, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(Limits {
        payload_limit: 64 * 1024,
    });
    if let Ok((msg, _used)) = codec.decode(data) {
        let again = codec.encode(&msg).expect("a decoded message re-encodes");
        let (back, used) = codec.decode(&again).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
        assert_eq!(used, again.len());
        // Encoding is canonical: encoding the decoded message again gives the same bytes.
        assert_eq!(codec.encode(&back).expect("re-encodes"), again);
    }
    // The streaming reader must agree with the buffer decoder on success.
    let mut cur = std::io::Cursor::new(data);
    if let Ok(msg) = codec.read_frame(&mut cur) {
        assert_eq!(codec.decode(data).map(|(m, _)| m).ok(), Some(msg));
    }
});
