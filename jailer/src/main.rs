//! husk-jailer binary.

fn main() {}
