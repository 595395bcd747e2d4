//! Parsing and validation of every endpoint with good and bad bodies, and the OpenAPI
//! file against the route table.

use super::*;

fn ok(method: &str, path: &str, body: &str) -> VmmAction {
    parse_request(method, path, body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path} {body}: {e:?}"))
}

fn bad(method: &str, path: &str, body: &str) -> String {
    let e = parse_request(method, path, body.as_bytes()).unwrap_err();
    assert_eq!(e.status, 400);
    e.message
}

#[test]
fn gets_without_body() {
    assert_eq!(ok("GET", "/", ""), VmmAction::GetInstanceInfo);
    assert_eq!(ok("GET", "/version", ""), VmmAction::GetVersion);
    assert_eq!(ok("GET", "/vm/config", ""), VmmAction::GetVmConfig);
    assert_eq!(
        ok("GET", "/machine-config", ""),
        VmmAction::GetMachineConfig
    );
    assert_eq!(
        bad("GET", "/version", "{}"),
        "GET request cannot have a body."
    );
}

#[test]
fn unknown_paths_and_methods() {
    assert_eq!(
        bad("GET", "/nope", ""),
        "Invalid request method and/or path: GET /nope."
    );
    assert_eq!(
        bad("DELETE", "/vm", ""),
        "Invalid request method and/or path: DELETE /vm."
    );
    assert_eq!(
        bad("POST", "/actions", "{}"),
        "Invalid request method and/or path: POST /actions."
    );
    assert!(bad("GET", "/boot-source", "").starts_with("Invalid request method"));
    assert!(bad("PUT", "/version", "{}").starts_with("Invalid request method"));
}

#[test]
fn boot_source() {
    assert_eq!(
        ok(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}"#
        ),
        VmmAction::PutBootSource(BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: Some("/i".into()),
            boot_args: Some("console=ttyS0".into()),
        })
    );
    assert_eq!(bad("PUT", "/boot-source", ""), "Empty PUT request.");
    let m = bad(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/k", "x": 1}"#,
    );
    assert!(m.contains("unknown field `x`"), "{m}");
    assert!(m.starts_with("An error occurred when deserializing the json body"));
    let m = bad("PUT", "/boot-source", r#"{"boot_args": "x"}"#);
    assert!(m.contains("missing field `kernel_image_path`"), "{m}");
    assert!(bad("PUT", "/boot-source", "{not json").contains("deserializing"));
}

#[test]
fn machine_config_put_and_patch() {
    match ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true}"#,
    ) {
        VmmAction::PutMachineConfig(m) => {
            assert_eq!(
                (m.vcpu_count, m.mem_size_mib, m.track_dirty_pages),
                (2, 256, true)
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(bad("PUT", "/machine-config", r#"{"vcpu_count": 2}"#).contains("mem_size_mib"));
    assert!(bad(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": -1, "mem_size_mib": 1}"#
    )
    .contains("deserializing"));
    match ok("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#) {
        VmmAction::PatchMachineConfig(u) => assert_eq!(u.mem_size_mib, Some(512)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        bad("PATCH", "/machine-config", "{}"),
        "Empty PATCH request."
    );
    assert_eq!(bad("PATCH", "/machine-config", ""), "Empty PATCH request.");
    assert!(bad("PATCH", "/machine-config", r#"{"vcpus": 1}"#).contains("unknown field"));
}

#[test]
fn vsock_entropy_logger_metrics() {
    match ok(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#,
    ) {
        VmmAction::PutVsock(v) => {
            assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/v.sock")))
        }
        other => panic!("{other:?}"),
    }
    assert!(bad("PUT", "/vsock", r#"{"guest_cid": 3}"#).contains("uds_path"));
    assert!(
        bad("PUT", "/vsock", r#"{"guest_cid": "3", "uds_path": "/v"}"#).contains("deserializing")
    );

    assert_eq!(
        ok("PUT", "/entropy", "{}"),
        VmmAction::PutEntropy(EntropySection::default())
    );
    assert!(bad("PUT", "/entropy", r#"{"rate": 1}"#).contains("unknown field"));

    match ok(
        "PUT",
        "/logger",
        r#"{"log_path": "/l", "level": "Debug", "show_level": true, "show_log_origin": false}"#,
    ) {
        VmmAction::PutLogger(l) => {
            assert_eq!(
                (l.level.as_deref(), l.show_level),
                (Some("Debug"), Some(true))
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(bad("PUT", "/logger", r#"{"path": "/l"}"#).contains("unknown field"));

    match ok(
        "PUT",
        "/metrics",
        r#"{"metrics_path": "/m", "emit_id": true}"#,
    ) {
        VmmAction::PutMetrics(m) => assert_eq!(m.emit_id, Some(true)),
        other => panic!("{other:?}"),
    }
    assert!(bad("PUT", "/metrics", "{}").contains("metrics_path"));
}

#[test]
fn actions_and_vm_state() {
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        VmmAction::InstanceStart
    );
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#),
        VmmAction::FlushMetrics
    );
    assert_eq!(
        ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        VmmAction::SendCtrlAltDel
    );
    assert!(
        bad("PUT", "/actions", r#"{"action_type": "Reboot"}"#).contains("unknown variant `Reboot`")
    );
    assert!(bad(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart", "payload": 1}"#
    )
    .contains("unknown field"));
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Paused"}"#),
        VmmAction::Pause
    );
    assert_eq!(
        ok("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        VmmAction::Resume
    );
    assert!(bad("PATCH", "/vm", r#"{"state": "Stopped"}"#).contains("unknown variant"));
    assert!(bad("PUT", "/vm", r#"{"state": "Paused"}"#).starts_with("Invalid request method"));
}

#[test]
fn drives_parse_with_firecracker_fields() {
    let body = r#"{"drive_id": "rootfs", "path_on_host": "/img/root.ext4", "is_root_device": true, "is_read_only": true, "partuuid": "0eaa91a0-01"}"#;
    assert_eq!(
        ok("PUT", "/drives/rootfs", body),
        VmmAction::PutDrive(DriveSection {
            drive_id: "rootfs".into(),
            path_on_host: "/img/root.ext4".into(),
            is_root_device: true,
            is_read_only: true,
            partuuid: Some("0eaa91a0-01".into()),
        })
    );
    let m = bad(
        "PUT",
        "/drives/other",
        r#"{"drive_id": "rootfs", "path_on_host": "r", "is_root_device": true, "is_read_only": true}"#,
    );
    assert!(m.contains("does not match"), "{m}");
    let m = bad(
        "PUT",
        "/drives/d",
        r#"{"drive_id": "d", "path_on_host": "r", "is_root_device": false, "is_read_only": true, "io_engine": "Async"}"#,
    );
    assert!(m.contains("unknown field"), "{m}");
    assert!(bad("PUT", "/drives/d", r#"{"drive_id": "d"}"#).contains("missing field"));
    assert_eq!(bad("PUT", "/drives/", "{}"), "The ID cannot be empty.");
    assert!(bad("PUT", "/drives/a-b", "{}").contains("alphanumeric"));
    assert!(bad("GET", "/drives/rootfs", "").starts_with("Invalid request method"));
}

/// Property names of one object definition in the OpenAPI file.
fn openapi_properties(text: &str, definition: &str) -> Vec<String> {
    let header = format!("  {definition}:");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != header).skip(1);
    let mut out = Vec::new();
    let mut in_props = false;
    for line in lines.by_ref() {
        if !line.starts_with("    ") {
            break;
        }
        if line.trim_end() == "    properties:" {
            in_props = true;
        } else if in_props {
            if let Some(name) = line.strip_prefix("      ").filter(|n| !n.starts_with(' ')) {
                out.push(name.trim_end().trim_end_matches(':').to_string());
            }
        }
    }
    out
}

#[test]
fn openapi_drive_definition_matches_the_config_type() {
    let text = include_str!("../openapi.yaml");
    let mut documented = openapi_properties(text, "Drive");
    documented.sort();
    let full = DriveSection {
        drive_id: "d".into(),
        path_on_host: "p".into(),
        is_root_device: true,
        is_read_only: false,
        partuuid: Some("1".into()),
    };
    let v = serde_json::to_value(&full).unwrap();
    let mut served: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    served.sort();
    assert_eq!(documented, served);
}

#[test]
fn responses_have_firecracker_shapes() {
    assert_eq!(response_for(&Ok(VmmData::Empty)), (204, None));
    let (s, b) = response_for(&Ok(VmmData::Version("1.2.3")));
    assert_eq!(
        (s, b.as_deref()),
        (200, Some(r#"{"firecracker_version":"1.2.3"}"#))
    );
    let (s, b) = response_for(&Err(ActionError::Invalid("no \"way\"".into())));
    assert_eq!(s, 400);
    let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
    assert_eq!(v["fault_message"], "no \"way\"");
    let (_, b) = response_for(&Ok(VmmData::MachineConfig(MachineConfig::default())));
    let v: serde_json::Value = serde_json::from_str(&b.unwrap()).unwrap();
    assert_eq!(
        (v["vcpu_count"].as_u64(), v["mem_size_mib"].as_u64()),
        (Some(1), Some(128))
    );
    assert_eq!(v["smt"], false);
}

/// (method, path) pairs of the OpenAPI file: `  /path:` lines under `paths:` and
/// `    get:`-style lines under each.
fn openapi_routes(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
        } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
            let m = m.trim_end();
            if let Some(verb) = m.strip_suffix(':') {
                if matches!(verb, "get" | "put" | "patch" | "post" | "delete") {
                    out.push((verb.to_ascii_uppercase(), p.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn openapi_file_lists_exactly_the_served_routes() {
    let text = include_str!("../openapi.yaml");
    let mut documented = openapi_routes(text);
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
    // And every served route parses: none is dead in the router.
    for (m, p) in ROUTES {
        let path = p.replace("{drive_id}", "d1");
        let body = if *m == "GET" { "" } else { "{}" };
        if let Err(e) = parse_request(m, &path, body.as_bytes()) {
            assert!(
                !e.message.starts_with("Invalid request method"),
                "{m} {p} is in ROUTES but not routed"
            );
        }
    }
}

#[test]
fn snapshot_routes_take_firecracker_bodies() {
    use crate::snapshot::params::{MemBackendType, SnapshotType};
    match ok(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_type":"Full","snapshot_path":"/s","mem_file_path":"/m"}"#,
    ) {
        VmmAction::CreateSnapshot(p) => {
            assert_eq!(p.snapshot_type, SnapshotType::Full);
            assert_eq!(p.mem_file_path, std::path::PathBuf::from("/m"));
        }
        other => panic!("{other:?}"),
    }
    match ok(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true,"vsock_override":{"uds_path":"/v"}}"#,
    ) {
        VmmAction::LoadSnapshot(p) => {
            assert!(p.resume_vm);
            assert_eq!(p.mem_backend.unwrap().backend_type, MemBackendType::File);
        }
        other => panic!("{other:?}"),
    }
    assert!(bad("PUT", "/snapshot/create", r#"{"snapshot_path":"/s"}"#).contains("mem_file_path"));
    assert!(bad(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_file_path":"/m","bogus":1}"#
    )
    .contains("bogus"));
    assert!(VmmAction::LoadSnapshot(
        serde_json::from_str(r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#).unwrap()
    )
    .is_pre_boot_only());
}
