//! The actions the controller carries out: what the API thread, the command line and
//! signals ask for, the data an action returns, its errors, and the channel they travel
//! on (an mpsc queue plus an eventfd that wakes the VMM thread's event loop).

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{
    BootSource, DriveSection, EntropySection, LoggerConfig, MachineConfig, MachineConfigUpdate,
    MetricsConfig, VsockSection,
};
use crate::snapshot::params::{SnapshotCreateParams, SnapshotLoadParams};

/// A request to the controller; each is one variant with its body type.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /boot-source` (pre-boot).
    PutBootSource(BootSource),
    /// `PUT /machine-config` (pre-boot).
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (pre-boot).
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /vsock` (pre-boot).
    PutVsock(VsockSection),
    /// `PUT /entropy` (pre-boot).
    PutEntropy(EntropySection),
    /// `PUT /drives/{drive_id}` (pre-boot): add or replace a drive.
    PutDrive(DriveSection),
    /// `PUT /logger` (pre-boot).
    PutLogger(LoggerConfig),
    /// `PUT /metrics` (pre-boot, once).
    PutMetrics(MetricsConfig),
    /// `PUT /actions` InstanceStart (pre-boot).
    InstanceStart,
    /// `PUT /actions` SendCtrlAltDel (post-boot): Ctrl+Alt+Del on the i8042 keyboard.
    SendCtrlAltDel,
    /// `PUT /actions` FlushMetrics.
    FlushMetrics,
    /// `PATCH /vm` Paused (post-boot).
    Pause,
    /// `PATCH /vm` Resumed (post-boot).
    Resume,
    /// `PUT /snapshot/create` (post-boot, paused).
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load` (pre-boot: a fresh process).
    LoadSnapshot(SnapshotLoadParams),
}

impl VmmAction {
    /// Whether the action only makes sense before the guest starts.
    pub fn is_pre_boot_only(&self) -> bool {
        matches!(
            self,
            VmmAction::PutBootSource(_)
                | VmmAction::PutMachineConfig(_)
                | VmmAction::PatchMachineConfig(_)
                | VmmAction::PutVsock(_)
                | VmmAction::PutEntropy(_)
                | VmmAction::PutDrive(_)
                | VmmAction::PutLogger(_)
                | VmmAction::PutMetrics(_)
                | VmmAction::InstanceStart
                | VmmAction::LoadSnapshot(_)
        )
    }

    /// Whether the action needs a running guest.
    pub fn is_post_boot_only(&self) -> bool {
        matches!(
            self,
            VmmAction::Pause
                | VmmAction::Resume
                | VmmAction::SendCtrlAltDel
                | VmmAction::CreateSnapshot(_)
        )
    }
}

/// `GET /` (Firecracker's `InstanceInfo`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The microVM id (`--id`, default `anonymous-instance`).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    /// husk's version.
    pub vmm_version: &'static str,
    /// `husk`.
    pub app_name: &'static str,
}

/// What a successful action returns.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Nothing (204).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(&'static str),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /vm/config`.
    VmConfig(serde_json::Value),
}

/// Why an action failed; the message is the API's `fault_message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// A pre-boot-only action after boot.
    #[error("The requested operation is not supported after starting the microVM: {0} configures the boot and is accepted only before InstanceStart.")]
    NotSupportedPostBoot(&'static str),
    /// A post-boot-only action before boot.
    #[error("The requested operation is not supported before starting the microVM: {0} needs a running guest (send InstanceStart first).")]
    NotSupportedPreBoot(&'static str),
    /// A value that is invalid or that husk does not support.
    #[error("{0}")]
    Invalid(String),
    /// The action failed.
    #[error("{0}")]
    Failed(String),
}

/// The result of one action.
pub type ActionResult = Result<VmmData, ActionError>;

/// One action with the channel its result goes back on.
#[derive(Debug)]
pub struct ActionRequest {
    /// The action.
    pub action: VmmAction,
    /// Where the result goes.
    pub reply: Sender<ActionResult>,
}

/// The sending side of the action channel (the API thread holds one).
#[derive(Debug, Clone)]
pub struct ActionSender {
    pub(super) tx: Sender<ActionRequest>,
    pub(super) evt: Arc<EventFd>,
}

impl ActionSender {
    /// Send `action`, wake the controller and wait for its result.
    pub fn request(&self, action: VmmAction) -> ActionResult {
        let (reply, rx) = channel();
        self.tx
            .send(ActionRequest { action, reply })
            .map_err(|_| ActionError::Failed("the VMM is shutting down".into()))?;
        self.evt
            .write(1)
            .map_err(|e| ActionError::Failed(format!("cannot wake the VMM thread: {e}")))?;
        rx.recv()
            .map_err(|_| ActionError::Failed("the VMM stopped before answering".into()))?
    }
}

/// The request that carries `action`, for messages.
pub(super) fn action_name(action: &VmmAction) -> &'static str {
    match action {
        VmmAction::PutBootSource(_) => "PUT /boot-source",
        VmmAction::PutMachineConfig(_) => "PUT /machine-config",
        VmmAction::PatchMachineConfig(_) => "PATCH /machine-config",
        VmmAction::PutVsock(_) => "PUT /vsock",
        VmmAction::PutEntropy(_) => "PUT /entropy",
        VmmAction::PutDrive(_) => "PUT /drives",
        VmmAction::PutLogger(_) => "PUT /logger",
        VmmAction::PutMetrics(_) => "PUT /metrics",
        VmmAction::InstanceStart => "InstanceStart",
        VmmAction::SendCtrlAltDel => "SendCtrlAltDel",
        VmmAction::FlushMetrics => "FlushMetrics",
        VmmAction::Pause => "PATCH /vm (Paused)",
        VmmAction::Resume => "PATCH /vm (Resumed)",
        VmmAction::CreateSnapshot(_) => "PUT /snapshot/create",
        VmmAction::LoadSnapshot(_) => "PUT /snapshot/load",
        VmmAction::GetInstanceInfo => "GET /",
        VmmAction::GetVersion => "GET /version",
        VmmAction::GetVmConfig => "GET /vm/config",
        VmmAction::GetMachineConfig => "GET /machine-config",
    }
}
