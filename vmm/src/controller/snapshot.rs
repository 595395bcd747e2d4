//! The controller's snapshot actions: `PUT /snapshot/create` (a paused VM → two
//! files), `PUT /snapshot/load` (a fresh process → a VM built from the two files), and
//! the snapshot taken automatically when the guest becomes ready (`--at-ready`).

use super::{error_chain, ActionError, Controller, VmmData};
use crate::snapshot::create::create_snapshot;
use crate::snapshot::params::{SnapshotCreateParams, SnapshotLoadParams};
use crate::snapshot::restore::{build_microvm_from_snapshot, RestoreArgs};
use crate::snapshot::{ConfigState, RootDriveState};
use crate::stop::StopReason;

impl Controller {
    /// `PUT /snapshot/create`: the VM must be paused (`PATCH /vm Paused`, which returns
    /// only once every vCPU is out of `KVM_RUN` with its I/O completed). Runs on the
    /// VMM thread, so no device work runs while the state is collected.
    pub(super) fn create_snapshot(
        &mut self,
        p: &SnapshotCreateParams,
    ) -> Result<VmmData, ActionError> {
        p.validate().map_err(ActionError::Invalid)?;
        if !self.paused {
            return Err(ActionError::Invalid(
                "the microVM is running: pause it first (PATCH /vm {\"state\": \"Paused\"})".into(),
            ));
        }
        let Some(vmm) = &self.vmm else {
            return Err(ActionError::NotSupportedPreBoot("PUT /snapshot/create"));
        };
        let config = ConfigState {
            root_drive: self
                .config
                .drives
                .iter()
                .find(|d| d.is_root_device)
                .map(|d| RootDriveState {
                    id: d.drive_id.clone(),
                    partuuid: d.partuuid.clone(),
                }),
        };
        let report =
            create_snapshot(vmm, &config, &p.snapshot_path, &p.mem_file_path).map_err(|e| {
                ActionError::Failed(format!("cannot create the snapshot: {}", error_chain(&e)))
            })?;
        if self.opts.boot_timer {
            eprintln!(
                "husk: snapshot created in {} us: state {} bytes, memory {} bytes apparent, {} bytes allocated",
                report.took_us, report.state_bytes, report.memory.apparent, report.memory.allocated
            );
        }
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/load`: build the VM from the files (paused), install the VMM
    /// thread's seccomp filter, and resume if asked.
    pub(super) fn load_snapshot(&mut self, p: &SnapshotLoadParams) -> Result<VmmData, ActionError> {
        let mem_path = p.mem_path().map_err(ActionError::Invalid)?;
        let args = RestoreArgs {
            state_path: p.snapshot_path.clone(),
            mem_path,
            vsock_override: p.vsock_override.as_ref().map(|v| v.uds_path.clone()),
            console: self.opts.console.clone(),
            seccomp: self.opts.seccomp,
        };
        let restored =
            build_microvm_from_snapshot(&args, &mut self.em, &self.stop, &self.ready_evt).map_err(
                |e| ActionError::Failed(format!("cannot load the snapshot: {}", error_chain(&e))),
            )?;
        let (vmm, report) = (restored.vmm, restored.report);
        if self.opts.seccomp {
            crate::seccomp::install(crate::seccomp::Thread::Vmm).map_err(|e| {
                ActionError::Failed(format!("cannot install the seccomp filter: {e}"))
            })?;
        }
        self.vmm = Some(vmm);
        self.paused = true;
        // GET /vm/config shows the restored machine (logger and metrics stay as set).
        self.config.boot_source = None;
        self.config.machine_config = restored.config.machine_config;
        self.config.drives = restored.config.drives;
        self.config.vsock = restored.config.vsock;
        self.config.entropy = restored.config.entropy;
        if p.resume_vm {
            if let Some(vmm) = &self.vmm {
                vmm.resume().map_err(|e| {
                    ActionError::Failed(format!("cannot resume: {}", error_chain(&e)))
                })?;
            }
            self.paused = false;
        }
        if self.opts.boot_timer {
            eprintln!(
                "husk: snapshot loaded in {} us (state file {} us)",
                report.total_us, report.state_us
            );
        }
        Ok(VmmData::Empty)
    }

    /// With `--at-ready`: pause, snapshot, and stop the VMM (exit status 0).
    pub(super) fn snapshot_at_ready(&mut self) {
        let Some(p) = self.opts.snapshot_at_ready.clone() else {
            return;
        };
        let result = self
            .handle(super::VmmAction::Pause)
            .and_then(|_| self.create_snapshot(&p));
        match result {
            Ok(_) => {
                log::info!("snapshot taken at ready: {}", p.snapshot_path.display());
                self.stop.stop(StopReason::SnapshotTaken);
            }
            Err(e) => {
                self.stop
                    .stop(StopReason::Error(format!("snapshot at ready failed: {e}")));
            }
        }
    }
}
