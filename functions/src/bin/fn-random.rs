//! `fn-random`: returns 32 random bytes (hex) from the kernel's `getrandom` per request.
//! It reads once at start too (as a warmed worker would), and never keeps a user-space
//! RNG state: a function restored from a snapshot must draw fresh bytes from the kernel
//! after the restore, because the kernel is reseeded by the agent's `Restored` handling
//! while any user-space generator state captured in the snapshot is the same in every
//! clone.

fn random_hex() -> Result<Vec<u8>, Vec<u8>> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid writable buffer of rest.len() bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            return Err(b"getrandom failed".to_vec());
        }
        filled += n as usize;
    }
    Ok(buf
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

fn main() {
    let _warm = random_hex();
    std::process::exit(husk_functions::run(|_| random_hex()));
}
