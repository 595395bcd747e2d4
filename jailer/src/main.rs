//! `husk-jailer`: confines one husk VMM process the way Firecracker's jailer does —
//! cgroup, resource limits, mount/PID/net namespaces, `pivot_root` into a directory that
//! holds only the VMM and its device nodes, an unprivileged uid/gid with no capabilities
//! and no-new-privs — then execs the VMM with `--id <id>` and the arguments after `--`.
//!
//! Unlike Firecracker's jailer, the jailer forks: the jailed child execs the VMM while the
//! parent (outside the jail) waits for it, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT, and
//! removes the cgroups and jail directory it created once the VMM exits (foreground
//! mode), or exits as soon as the VMM runs (`--daemonize`). On any failure it removes
//! everything it created, newest first. The VMM's host pid is written to
//! `<jail root>/<exec file name>.pid` in both modes.

mod args;
mod cgroup;
mod chroot;
mod cleanup;
mod jail;
mod jail_dir;
mod paths;
mod privs;
mod process;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    // Before anything is opened: drop whatever the caller leaked to us.
    if let Err(e) = process::close_inherited_fds() {
        fail(&e);
    }
    process::clear_env();
    let cfg = match args::JailConfig::from_cli(cli) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    match jail::run(&cfg) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::error::Error) -> ! {
    eprintln!("husk-jailer: error: {}", jail::chain(e));
    std::process::exit(1)
}
