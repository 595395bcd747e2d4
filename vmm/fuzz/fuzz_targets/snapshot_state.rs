//! Fuzz the snapshot state file decoder: any bytes give a `MicrovmState` or an error,
//! never a panic, and a decoded state re-encodes to a file that decodes again.
#![no_main]

use husk_vmm::snapshot::format;
use husk_vmm::snapshot::MicrovmState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw input as a whole file (header checks first) ...
    if let Ok(state) = format::decode::<MicrovmState>(data) {
        let again = format::encode(&state).expect("a decoded state encodes");
        assert!(format::decode::<MicrovmState>(&again).is_ok());
    }
    // ... and as a body behind a valid header, so the fuzzer reaches the decoder.
    let mut file = Vec::with_capacity(format::HEADER_LEN + data.len());
    file.extend_from_slice(&format::MAGIC);
    file.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(&format::checksum(data).to_le_bytes());
    file.extend_from_slice(data);
    let _ = format::decode::<MicrovmState>(&file);
});
