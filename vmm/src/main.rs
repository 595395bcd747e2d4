//! `husk`: the VMM binary.

fn main() {
    println!("husk {}", env!("CARGO_PKG_VERSION"));
}
