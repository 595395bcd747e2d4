//! Controller tests: configuration, the action channel, signals, metrics.

use super::*;
use crate::config::{MachineConfigUpdate, MetricsConfig};

fn controller() -> Controller {
    Controller::new(ControllerOptions {
        seccomp: false,
        ..ControllerOptions::default()
    })
    .unwrap()
}

#[test]
fn pre_boot_configuration_is_recorded_and_validated() {
    let mut c = controller();
    assert_eq!(
        c.handle(VmmAction::GetMachineConfig),
        Ok(VmmData::MachineConfig(MachineConfig::default()))
    );
    c.handle(VmmAction::PatchMachineConfig(MachineConfigUpdate {
        vcpu_count: Some(2),
        ..Default::default()
    }))
    .unwrap();
    let e = c
        .handle(VmmAction::PatchMachineConfig(MachineConfigUpdate {
            vcpu_count: Some(0),
            ..Default::default()
        }))
        .unwrap_err();
    assert!(e.to_string().contains("vcpu_count 0"), "{e}");
    match c.handle(VmmAction::GetMachineConfig).unwrap() {
        VmmData::MachineConfig(m) => {
            assert_eq!(m.vcpu_count, 2, "a failed patch changes nothing")
        }
        other => panic!("{other:?}"),
    }
    let e = c
        .handle(VmmAction::PutVsock(VsockSection {
            guest_cid: 1,
            uds_path: "/v".into(),
            vsock_id: None,
        }))
        .unwrap_err();
    assert!(e.to_string().contains("CID 1"));
    match c.handle(VmmAction::GetInstanceInfo).unwrap() {
        VmmData::InstanceInfo(i) => {
            assert_eq!(
                (i.state, i.id.as_str(), i.app_name),
                ("Not started", "anonymous-instance", "husk")
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn post_boot_actions_are_refused_before_boot_and_start_needs_a_kernel() {
    let mut c = controller();
    let e = c.handle(VmmAction::Pause).unwrap_err();
    assert!(matches!(
        e,
        ActionError::NotSupportedPreBoot("PATCH /vm (Paused)")
    ));
    assert!(e.to_string().contains("before starting the microVM"));
    let e = c.handle(VmmAction::SendCtrlAltDel).unwrap_err();
    assert!(matches!(
        e,
        ActionError::NotSupportedPreBoot("SendCtrlAltDel")
    ));
    let e = c.handle(VmmAction::InstanceStart).unwrap_err();
    assert!(e.to_string().contains("PUT /boot-source first"), "{e}");
    let e = c.handle(VmmAction::FlushMetrics).unwrap_err();
    assert!(e.to_string().contains("PUT /metrics first"), "{e}");
    c.handle(VmmAction::PutBootSource(BootSource {
        kernel_image_path: "/nonexistent/vmlinux".into(),
        initrd_path: None,
        boot_args: None,
    }))
    .unwrap();
    let e = c.handle(VmmAction::InstanceStart).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    assert!(c.vmm().is_none());
}

#[test]
fn actions_over_the_channel_get_one_reply_each() {
    let mut c = controller();
    let sender = c.sender();
    let stop = c.stop.try_clone().unwrap();
    let client = std::thread::spawn(move || {
        let v = sender.request(VmmAction::GetVersion);
        let i = sender.request(VmmAction::Resume);
        stop.stop(StopReason::Reset);
        (v, i)
    });
    assert_eq!(c.run().unwrap(), StopReason::Reset);
    let (v, i) = client.join().unwrap();
    assert_eq!(v, Ok(VmmData::Version(env!("CARGO_PKG_VERSION"))));
    assert!(matches!(i, Err(ActionError::NotSupportedPreBoot(_))));
}

#[test]
fn sigterm_stops_the_event_loop_with_status_143() {
    let mut c = controller();
    crate::signals::install_term_handlers(c.signal_eventfd()).unwrap();
    // SAFETY: raising a signal whose handler was just installed (it only records
    // the signal and writes an eventfd).
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    let reason = c.run().unwrap();
    assert_eq!(reason, StopReason::Signal(libc::SIGTERM));
    assert_eq!(reason.exit_code(), 143);
}

#[test]
fn metrics_flush_writes_devices_vcpu_and_api_sections() {
    let mut c = controller();
    let path = std::env::temp_dir().join(format!("husk-ctl-metrics-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    c.handle(VmmAction::PutMetrics(MetricsConfig {
        metrics_path: path.clone(),
        emit_id: None,
        properties: None,
    }))
    .unwrap();
    assert!(c
        .handle(VmmAction::PutMetrics(MetricsConfig {
            metrics_path: path.clone(),
            emit_id: None,
            properties: None,
        }))
        .unwrap_err()
        .to_string()
        .contains("set once"));
    c.handle(VmmAction::FlushMetrics).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert!(v["vcpu"]["exit_io_out"].is_u64());
    assert!(v["api_server"]["requests"].is_u64());
    assert!(v["devices"].is_object());
    assert!(v["boot"]["ready_after_us"].is_null());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn put_drive_adds_replaces_and_keeps_one_root() {
    use crate::config::DriveSection;
    let drive = |id: &str, root: bool, ro: bool| DriveSection {
        drive_id: id.into(),
        path_on_host: format!("/img/{id}").into(),
        is_root_device: root,
        is_read_only: ro,
        partuuid: None,
    };
    let mut c = controller();
    c.handle(VmmAction::PutDrive(drive("rootfs", true, false)))
        .unwrap();
    c.handle(VmmAction::PutDrive(drive("data", false, false)))
        .unwrap();
    // Same id: replaced in place.
    c.handle(VmmAction::PutDrive(drive("rootfs", true, true)))
        .unwrap();
    // A second root device is refused and changes nothing.
    let e = c
        .handle(VmmAction::PutDrive(drive("other", true, true)))
        .unwrap_err();
    assert!(e.to_string().contains("one root device"), "{e}");
    let VmmData::VmConfig(v) = c.handle(VmmAction::GetVmConfig).unwrap() else {
        panic!("not a config")
    };
    let drives = v["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 2);
    assert_eq!(
        (&drives[0]["drive_id"], &drives[0]["is_read_only"]),
        (&serde_json::json!("rootfs"), &serde_json::json!(true))
    );
    assert_eq!(drives[1]["drive_id"], "data");
    let resources = c.config.to_resources().unwrap_err();
    assert!(resources.to_string().contains("boot-source"));
}

/// A minimal x86_64 ELF "kernel": one PT_LOAD segment at 2 MiB holding `code`, entry
/// at its start.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x20_0000;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers right after
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&120u64.to_le_bytes()); // offset of the code
    f.extend_from_slice(&LOAD.to_le_bytes()); // vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(f.len(), 120);
    f.extend_from_slice(code);
    f
}

/// A start that fails after the devices were attached (the command line is checked
/// last) leaves nothing registered: the vsock socket is closed and removed, and the
/// corrected retry builds the VM (listening on the same path) and runs the guest,
/// whose i8042 reset ends it.
#[test]
fn failed_start_rolls_back_so_a_corrected_retry_boots() {
    use std::os::unix::net::UnixStream;
    let dir = std::env::temp_dir().join(format!("husk-ctl-retry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("vmlinux");
    // mov al,0xfe; out 0x64,al; hlt: the i8042 CPU reset.
    std::fs::write(&kernel, tiny_elf(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4])).unwrap();
    let uds = dir.join("v.sock");
    let mut c = Controller::new(ControllerOptions {
        seccomp: false,
        console: ConsoleConfig::Null,
        ..ControllerOptions::default()
    })
    .unwrap();
    let boot = |args: String| BootSource {
        kernel_image_path: kernel.clone(),
        initrd_path: None,
        boot_args: Some(args),
    };
    c.handle(VmmAction::PutBootSource(boot("x".repeat(3000))))
        .unwrap();
    c.handle(VmmAction::PutVsock(VsockSection {
        guest_cid: 3,
        uds_path: uds.clone(),
        vsock_id: None,
    }))
    .unwrap();
    let e = c.handle(VmmAction::InstanceStart).unwrap_err();
    assert!(e.to_string().contains("invalid kernel command line"), "{e}");
    assert!(c.vmm().is_none());
    assert!(
        UnixStream::connect(&uds).is_err() && !uds.exists(),
        "the failed start's vsock device still listens"
    );

    c.handle(VmmAction::PutBootSource(boot("console=ttyS0 quiet".into())))
        .unwrap();
    c.handle(VmmAction::InstanceStart)
        .unwrap_or_else(|e| panic!("the corrected retry failed: {e}"));
    assert!(
        UnixStream::connect(&uds).is_ok(),
        "the retry's vsock listens"
    );
    assert_eq!(c.run().unwrap(), StopReason::Reset, "the guest ran");
    let _ = std::fs::remove_dir_all(&dir);
}
