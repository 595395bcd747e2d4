//! The restore gate: a VM restored from a snapshot serves no invocation before the
//! host's Restored message, whether or not it booted with `husk.await_restore=1`.

use std::sync::atomic::AtomicU32;

use super::*;
use crate::protocol::{Status, FEATURE_RESTORE_GATE};

/// A machine whose VM generation the test moves, as a VMM restore does.
struct FakeVm {
    generation: Arc<AtomicU32>,
    restores: Arc<AtomicUsize>,
}

impl Platform for FakeVm {
    fn shutdown(&self) {}
    fn restored(&self, _r: &Restored) {
        self.restores.fetch_add(1, Ordering::SeqCst);
    }
    fn vm_generation(&self) -> Option<u32> {
        Some(self.generation.load(Ordering::SeqCst))
    }
}

/// A reusable exec-mode agent running `/bin/cat` (echoes the payload).
fn agent(await_restore: bool) -> (Arc<Agent>, Arc<AtomicU32>, Arc<AtomicUsize>) {
    let boot = BootOptions {
        reuse: true,
        await_restore,
        ..BootOptions::default()
    };
    let function = FunctionConfig::new("/bin/cat", Mode::Exec);
    let generation = Arc::new(AtomicU32::new(0));
    let restores = Arc::new(AtomicUsize::new(0));
    let platform = FakeVm {
        generation: generation.clone(),
        restores: restores.clone(),
    };
    let a = Agent::new(
        ServerConfig::new(boot, function),
        Reaper::per_child(),
        Box::new(platform),
    )
    .unwrap();
    (a, generation, restores)
}

fn invoke(a: &Agent, id: u64) -> Message {
    let mut r = a.handle(Message::Invoke(Invoke::new(id, 10_000, b"hi".to_vec())));
    assert_eq!(r.len(), 1, "{r:?}");
    r.remove(0)
}

fn assert_served(m: &Message) {
    match m {
        Message::Result(r) => assert_eq!((r.status, r.body.as_slice()), (Status::Ok, &b"hi"[..])),
        other => panic!("not served: {other:?}"),
    }
}

fn assert_gated(m: &Message) {
    match m {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::AwaitingRestore as u16);
            assert_eq!(e.message, AWAITING_RESTORE);
            assert!(e.message.contains("send it before invoking"));
        }
        other => panic!("not refused: {other:?}"),
    }
}

fn restored(id: &str) -> Message {
    Message::Restored(Restored {
        entropy_seed: vec![1; 32],
        wall_clock_ns: 1_800_000_000_000_000_000,
        new_sandbox_id: id.into(),
    })
}

#[test]
fn normally_booted_agent_gates_after_a_restore_until_restored() {
    let (a, generation, restores) = agent(false);
    // Booted normally and warmed: serves.
    assert_served(&invoke(&a, 1));
    // The VMM restored a snapshot of it (generation 0 -> 1): refused, and refused
    // again, until the host's Restored.
    generation.store(1, Ordering::SeqCst);
    assert_gated(&invoke(&a, 2));
    assert_gated(&invoke(&a, 3));
    match a.handle(restored("clone-1")).as_slice() {
        [Message::Hello(h)] => {
            assert_eq!(
                (h.sandbox_id.as_str(), h.restore_generation),
                ("clone-1", 1)
            );
            assert_ne!(h.features & FEATURE_RESTORE_GATE, 0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        restores.load(Ordering::SeqCst),
        1,
        "entropy and clock applied"
    );
    assert_served(&invoke(&a, 4));
    assert_served(&invoke(&a, 5));
    // A clone of the clone gates again.
    generation.store(2, Ordering::SeqCst);
    assert_gated(&invoke(&a, 6));
    a.handle(restored("clone-2"));
    assert_served(&invoke(&a, 7));
}

#[test]
fn await_restore_boot_option_still_gates_from_boot() {
    let (a, _generation, _) = agent(true);
    assert_gated(&invoke(&a, 1));
    a.handle(restored("r"));
    assert_served(&invoke(&a, 2));
}

#[test]
fn unknown_generation_or_no_restore_never_gates() {
    let (a, _generation, _) = agent(false);
    for id in 0..3 {
        assert_served(&invoke(&a, id));
    }
    // A platform that cannot read the generation (an old VMM, not in a VM): as before.
    let boot = BootOptions {
        reuse: true,
        ..BootOptions::default()
    };
    let plain = Agent::new(
        ServerConfig::new(boot, FunctionConfig::new("/bin/cat", Mode::Exec)),
        Reaper::per_child(),
        Box::new(crate::pid1::HostPlatform),
    )
    .unwrap();
    assert_served(&invoke(&plain, 1));
}
