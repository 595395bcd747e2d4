//! `fn-echo`: returns its payload unchanged (exec or worker mode).

fn main() {
    std::process::exit(husk_functions::run(|p| Ok(p.to_vec())));
}
