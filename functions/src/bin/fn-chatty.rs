//! `fn-chatty`: prints more than any output cap: the payload's number of bytes (default
//! 16 MiB) of `x`, in exec or worker mode.

const DEFAULT_BYTES: u64 = 16 * 1024 * 1024;
const MAX_BYTES: u64 = 1 << 32;

fn main() {
    std::process::exit(husk_functions::run(|p| {
        let n = husk_functions::parse_number(p)
            .unwrap_or(DEFAULT_BYTES)
            .min(MAX_BYTES);
        Ok(vec![b'x'; n as usize])
    }));
}
