//! husk-agent binary.

fn main() {}
