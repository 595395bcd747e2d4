//! `husk`: the VMM binary. See `husk --help` for usage and exit statuses.

fn main() {
    husk_vmm::logger::mark_process_start();
    let code = match husk_vmm::cli::run_main(std::env::args().collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk: {}", husk_agent::sync::error_chain(&e));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
