//! Firecracker's REST routes: (method, path, body) → a [`VmmAction`], and a result →
//! (status, JSON body). Pure functions, unit-tested without a socket.

use serde::Deserialize;

use crate::config::{
    BootSource, DriveSection, EntropySection, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, VsockSection,
};
use crate::controller::{ActionError, ActionResult, VmmAction, VmmData};

/// Every (method, path) the API serves; `{drive_id}` stands for one path segment. The
/// OpenAPI file lists exactly these (checked by a test).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("PUT", "/boot-source"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/actions"),
    ("GET", "/vm/config"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
    ("PUT", "/drives/{drive_id}"),
];

/// An API error: status code and `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The `fault_message`.
    pub message: String,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

/// `PUT /actions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Debug, Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn invalid_path(method: &str, path: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid request method and/or path: {method} {path}."
    ))
}

/// Firecracker's rule for resource ids: non-empty, alphanumeric or `_`.
fn checked_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request("The ID cannot be empty."));
    }
    if !crate::config::valid_resource_id(id) {
        return Err(ApiError::bad_request(
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        ));
    }
    Ok(id)
}

/// Parse one request into an action.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<VmmAction, ApiError> {
    match method {
        "GET" if !body.is_empty() => {
            return Err(ApiError::bad_request("GET request cannot have a body."))
        }
        "PUT" if body.is_empty() => return Err(ApiError::bad_request("Empty PUT request.")),
        "PATCH" if body.is_empty() => return Err(ApiError::bad_request("Empty PATCH request.")),
        _ => {}
    }
    if let Some(id) = path.strip_prefix("/drives/") {
        if method != "PUT" {
            return Err(invalid_path(method, path));
        }
        checked_id(id)?;
        let drive = json::<DriveSection>(body)?;
        if drive.drive_id != id {
            return Err(ApiError::bad_request(format!(
                "The drive_id in the body ({}) does not match the one in the path ({id}).",
                drive.drive_id
            )));
        }
        return Ok(VmmAction::PutDrive(drive));
    }
    let action = match (method, path) {
        ("GET", "/") => VmmAction::GetInstanceInfo,
        ("GET", "/version") => VmmAction::GetVersion,
        ("GET", "/vm/config") => VmmAction::GetVmConfig,
        ("GET", "/machine-config") => VmmAction::GetMachineConfig,
        ("PUT", "/boot-source") => VmmAction::PutBootSource(json::<BootSource>(body)?),
        ("PUT", "/machine-config") => VmmAction::PutMachineConfig(json::<MachineConfig>(body)?),
        ("PATCH", "/machine-config") => {
            let u = json::<MachineConfigUpdate>(body)?;
            if u.is_empty() {
                return Err(ApiError::bad_request("Empty PATCH request."));
            }
            VmmAction::PatchMachineConfig(u)
        }
        ("PUT", "/vsock") => VmmAction::PutVsock(json::<VsockSection>(body)?),
        ("PUT", "/entropy") => VmmAction::PutEntropy(json::<EntropySection>(body)?),
        ("PUT", "/logger") => VmmAction::PutLogger(json::<LoggerConfig>(body)?),
        ("PUT", "/metrics") => VmmAction::PutMetrics(json::<MetricsConfig>(body)?),
        ("PUT", "/actions") => match json::<ActionBody>(body)?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        ("PATCH", "/vm") => match json::<VmStateBody>(body)?.state {
            VmState::Paused => VmmAction::Pause,
            VmState::Resumed => VmmAction::Resume,
        },
        ("PUT", "/snapshot/create") => VmmAction::CreateSnapshot(json(body)?),
        ("PUT", "/snapshot/load") => VmmAction::LoadSnapshot(json(body)?),
        _ => return Err(invalid_path(method, path)),
    };
    Ok(action)
}

/// The `{"fault_message": ...}` body.
pub fn fault_body(message: &str) -> String {
    serde_json::json!({ "fault_message": message }).to_string()
}

/// (status, body) for an action's result: 200 with JSON for data, 204 for nothing,
/// 400 with a fault message for an error.
pub fn response_for(result: &ActionResult) -> (u16, Option<String>) {
    match result {
        Ok(VmmData::Empty) => (204, None),
        Ok(VmmData::InstanceInfo(i)) => (200, serde_json::to_string(i).ok()),
        Ok(VmmData::Version(v)) => (
            200,
            Some(serde_json::json!({ "firecracker_version": v }).to_string()),
        ),
        Ok(VmmData::MachineConfig(m)) => (200, serde_json::to_string(m).ok()),
        Ok(VmmData::VmConfig(v)) => (200, Some(v.to_string())),
        Err(e) => (400, Some(fault_body(&error_text(e)))),
    }
}

fn error_text(e: &ActionError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests;
