//! `fn-hash`: CPU-bound. Hashes the payload with SHA-256 N times (each round hashes the
//! previous digest) and returns the hex digest. N comes from a first payload line
//! `rounds=N`, else from `HASH_ROUNDS`, else 100000.

use sha2::{Digest, Sha256};

const DEFAULT_ROUNDS: u64 = 100_000;
const MAX_ROUNDS: u64 = 1_000_000_000;

fn rounds_and_data(p: &[u8]) -> (u64, &[u8]) {
    if let Some(rest) = p.strip_prefix(b"rounds=") {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        if let Some(n) = husk_functions::parse_number(&rest[..end]) {
            let data = rest.get(end + 1..).unwrap_or(&[]);
            return (n.min(MAX_ROUNDS), data);
        }
    }
    let n = std::env::var("HASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    (n.min(MAX_ROUNDS), p)
}

fn hash(p: &[u8]) -> Vec<u8> {
    let (rounds, data) = rounds_and_data(p);
    let mut digest = Sha256::digest(data);
    for _ in 1..rounds {
        digest = Sha256::digest(digest);
    }
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.into_bytes()
}

fn main() {
    std::process::exit(husk_functions::run(|p| Ok(hash(p))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_is_plain_sha256() {
        assert_eq!(
            hash(b"rounds=1\nabc"),
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_vec()
        );
        assert_ne!(hash(b"rounds=2\nabc"), hash(b"rounds=1\nabc"));
    }
}
