//! `husk`: the VMM binary. See `husk --help` for usage and exit statuses.

fn main() {
    husk_vmm::logger::mark_process_start();
    let code = match husk_vmm::cli::run_main(std::env::args().collect()) {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("husk: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
