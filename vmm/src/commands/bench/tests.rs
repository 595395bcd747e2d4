//! `husk bench` flag parsing and validation.

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

fn parse(s: &str) -> Result<BenchArgs, clap::Error> {
    let argv: Vec<&str> = s.split_whitespace().collect();
    match Cli::try_parse_from(argv)?.command {
        Some(Command::Bench(b)) => Ok(b),
        other => panic!("expected bench, got {other:?}"),
    }
}

#[test]
fn flags_parse_with_defaults() {
    let b = parse("husk bench --kernel /k --function /f --agent /a").unwrap();
    assert_eq!(
        (b.runs, b.invocations, b.mem_mib, b.mode, b.json),
        (5, 100, 128, Mode::Exec, false)
    );
    let b = parse(
        "husk bench --kernel /k --initrd /i --runs 7 --json --plot /o.svg --mode worker --peer-initrd /p --peer-marker HELLO",
    )
    .unwrap();
    assert_eq!((b.runs, b.mode, b.json), (7, Mode::Worker, true));
    assert_eq!(b.plot, Some(PathBuf::from("/o.svg")));
    assert_eq!(b.peer_marker.as_deref(), Some("HELLO"));
}

#[test]
fn bad_run_counts_are_refused_with_clear_errors() {
    for bad in ["0", "-3", "many", "10001"] {
        let e = parse(&format!("husk bench --kernel /k --initrd /i --runs={bad}")).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("--runs"), "{e}");
    }
    let e = parse("husk bench --kernel /k --initrd /i --invocations 0").unwrap_err();
    assert!(e.to_string().contains("--invocations"), "{e}");
}

#[test]
fn missing_or_conflicting_inputs_are_refused() {
    let e = parse("husk bench --initrd /i").unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    assert!(e.to_string().contains("--kernel"), "{e}");
    // Neither a function nor an initramfs.
    let e = parse("husk bench --kernel /k").unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    // A function needs the agent to pack it with.
    let e = parse("husk bench --kernel /k --function /f").unwrap_err();
    assert!(e.to_string().contains("--agent"), "{e}");
    assert!(parse("husk bench --kernel /k --function /f --agent /a --initrd /i").is_err());
    assert!(parse("husk bench --kernel /k --initrd /i --mode daemon").is_err());
    // The marker belongs to the peer pair.
    assert!(parse("husk bench --kernel /k --initrd /i --peer-marker X").is_err());
    // A root drive alone is enough (the function is on the image).
    let b = parse("husk bench --kernel /k --drive path=/py.ext4,root,ro").unwrap();
    assert_eq!(b.drive.as_deref(), Some("path=/py.ext4,root,ro"));
    assert!(b.initrd.is_none() && b.function.is_none());
}

#[test]
fn validation_names_the_missing_file_and_exits_2() {
    let b = parse("husk bench --kernel /nonexistent/vmlinux --initrd /nonexistent/i.cpio").unwrap();
    let e = b.validate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "--kernel /nonexistent/vmlinux does not exist or is not a file"
    );
    assert_eq!(run(&b), EXIT_USAGE);
    // A directory is not a kernel either.
    let b = parse("husk bench --kernel /tmp --initrd /tmp").unwrap();
    assert!(matches!(
        b.validate(),
        Err(BenchError::Missing {
            what: "--kernel",
            ..
        })
    ));
}

#[test]
fn every_scenario_has_a_unique_id_and_a_unit() {
    let ids: Vec<&str> = ScenarioId::ALL.iter().map(|s| s.meta().0).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    assert!(ids.contains(&"pool_invoke_latency"));
    for id in ScenarioId::ALL {
        let (name, _, _, unit) = id.meta();
        assert!(["ms", "KiB", "bytes"].contains(&unit), "{name}");
    }
}

#[test]
fn pool_flags_default_to_k2_at_1_and_5_per_second() {
    let b = parse("husk bench --kernel /k --initrd /i").unwrap();
    assert_eq!(
        (b.pool_rate.clone(), b.pool_size, b.pool_invocations),
        (vec![1.0, 5.0], 2, 20)
    );
    let b = parse("husk bench --kernel /k --initrd /i --pool-rate 0.5,2,10 --pool-size 3 --pool-invocations 7").unwrap();
    assert_eq!(
        (b.pool_rate, b.pool_size, b.pool_invocations),
        (vec![0.5, 2.0, 10.0], 3, 7)
    );
    for bad in [
        "--pool-rate 0",
        "--pool-rate 1,x",
        "--pool-size 0",
        "--pool-invocations 0",
    ] {
        let e = parse(&format!("husk bench --kernel /k --initrd /i {bad}")).unwrap_err();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{bad}: {e}"
        );
    }
}

#[test]
fn each_pool_rate_is_its_own_scenario_with_its_rate_in_the_title() {
    let s = pool_scenario(
        5.0,
        2,
        ScenarioId::PoolInvokeLatency.measured(vec![1.0, 2.0]),
    );
    assert_eq!(s.id, "pool_invoke_latency");
    assert_eq!((s.rate_per_s, s.pool_size), (Some(5.0), Some(2)));
    assert!(
        s.title
            .starts_with("pool invocation latency at 5 req/s, K=2"),
        "{}",
        s.title
    );
    assert_eq!(s.status, report::Status::Measured);
}

#[test]
fn bench_appears_in_help() {
    use clap::CommandFactory;
    let help = Cli::command().render_help().to_string();
    assert!(help.contains("bench"), "{help}");
}
