//! The VMM controller: owns the configuration and, once booted, the [`Vmm`]; runs the
//! VMM thread's one event loop. The loop blocks in `epoll_wait` until something happens
//! (a device's queue or socket, an action, the stop eventfd, the ready marker, the boot
//! timeout or a termination signal): there is no periodic polling, so an idle sandbox
//! costs the VMM no wake-ups.
//!
//! Everything that changes the VM arrives as a [`VmmAction`] over the action channel
//! (an mpsc queue plus an eventfd that wakes the loop), from the API thread or the
//! command line; each action gets exactly one [`ActionResult`] back.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::builder::{build_microvm_for_boot, BuildError, ConsoleConfig};
use crate::config::{BootSource, EntropySection, MachineConfig, VmConfig, VsockSection};
use crate::metrics::MetricsSink;
use crate::stop::{StopReason, StopSignal};
use crate::vmm::Vmm;
use crate::EventManager;

use action::action_name;
pub use action::{
    ActionError, ActionRequest, ActionResult, ActionSender, InstanceInfo, VmmAction, VmmData,
};

const WAKE_ACTION: u32 = 1;
const WAKE_STOP: u32 = 2;
const WAKE_READY: u32 = 4;
const WAKE_TIMER: u32 = 8;
const WAKE_SIGNAL: u32 = 16;

enum Source {
    Evt(EventFd),
    Timer(Arc<Mutex<TimerFd>>),
}

/// Event-manager subscriber for the controller's own fds: drains them and records
/// which fired; the controller acts on that after `run` returns.
struct Wakeups {
    sources: Vec<(Source, u32)>,
    fired: Arc<AtomicU32>,
}

impl MutEventSubscriber for Wakeups {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let bit = events.data();
        for (src, b) in &self.sources {
            if *b != bit {
                continue;
            }
            match src {
                Source::Evt(e) => {
                    let _ = e.read();
                }
                Source::Timer(t) => {
                    let _ = crate::devices::bus::lock(t).wait();
                }
            }
        }
        self.fired.fetch_or(bit, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (src, bit) in &self.sources {
            let r = match src {
                Source::Evt(e) => ops.add(Events::with_data(e, *bit, EventSet::IN)),
                Source::Timer(t) => ops.add(Events::with_data(
                    &*crate::devices::bus::lock(t),
                    *bit,
                    EventSet::IN,
                )),
            };
            if let Err(e) = r {
                log::error!("cannot watch a controller event: {e:?}");
            }
        }
    }
}

/// Errors of the controller itself.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// An eventfd, timerfd or the event manager could not be created.
    #[error("cannot set up the VMM event loop: {0}")]
    Setup(String),
    /// The event loop failed.
    #[error("the VMM event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// Building the VM.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A vCPU did not follow a command.
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    /// The VMM seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Logger or metrics from the configuration.
    #[error("{0}")]
    Action(#[from] ActionError),
}

/// How the controller boots the VM (from the command line).
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// The microVM id.
    pub id: String,
    /// Guest console.
    pub console: ConsoleConfig,
    /// Print the ready line and memory report to stderr.
    pub boot_timer: bool,
    /// Install seccomp filters.
    pub seccomp: bool,
    /// Stop with [`StopReason::BootTimeout`] if not ready in time.
    pub boot_timeout: Option<Duration>,
    /// Pause and snapshot when the guest becomes ready, then stop
    /// (`husk snapshot create --at-ready`).
    pub snapshot_at_ready: Option<crate::snapshot::params::SnapshotCreateParams>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            id: "anonymous-instance".into(),
            console: ConsoleConfig::Stdout,
            boot_timer: false,
            seccomp: true,
            boot_timeout: None,
            snapshot_at_ready: None,
        }
    }
}

/// The controller (see the module docs).
pub struct Controller {
    em: EventManager,
    fired: Arc<AtomicU32>,
    actions: Receiver<ActionRequest>,
    sender: ActionSender,
    stop: StopSignal,
    ready_evt: EventFd,
    signal_evt: EventFd,
    timer: Arc<Mutex<TimerFd>>,
    opts: ControllerOptions,
    config: VmConfig,
    vmm: Option<Vmm>,
    paused: bool,
    metrics: Option<MetricsSink>,
}

fn setup_err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> ControllerError {
    move |e| ControllerError::Setup(format!("{what}: {e:?}"))
}

impl Controller {
    /// A controller with nothing configured.
    pub fn new(opts: ControllerOptions) -> Result<Self, ControllerError> {
        let em = EventManager::new().map_err(setup_err("event manager"))?;
        let stop = StopSignal::new().map_err(setup_err("stop eventfd"))?;
        Self::with_parts(opts, em, stop, None)
    }

    /// A controller around a VM built by hand (tests): `em` holds its devices.
    pub fn with_vmm(em: EventManager, vmm: Vmm) -> Result<Self, ControllerError> {
        let stop = vmm
            .stop_signal()
            .try_clone()
            .map_err(setup_err("stop eventfd"))?;
        let opts = ControllerOptions {
            seccomp: false,
            ..ControllerOptions::default()
        };
        Self::with_parts(opts, em, stop, Some(vmm))
    }

    fn with_parts(
        opts: ControllerOptions,
        mut em: EventManager,
        stop: StopSignal,
        vmm: Option<Vmm>,
    ) -> Result<Self, ControllerError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("eventfd"));
        let action_evt = evt()?;
        let ready_evt = evt()?;
        let signal_evt = evt()?;
        let timer = Arc::new(Mutex::new(TimerFd::new().map_err(setup_err("timerfd"))?));
        let clone = |e: &EventFd| e.try_clone().map_err(setup_err("eventfd"));
        let fired = Arc::new(AtomicU32::new(0));
        let wakeups = Wakeups {
            sources: vec![
                (Source::Evt(clone(&action_evt)?), WAKE_ACTION),
                (Source::Evt(clone(stop.eventfd())?), WAKE_STOP),
                (Source::Evt(clone(&ready_evt)?), WAKE_READY),
                (Source::Timer(timer.clone()), WAKE_TIMER),
                (Source::Evt(clone(&signal_evt)?), WAKE_SIGNAL),
            ],
            fired: fired.clone(),
        };
        em.add_subscriber(Arc::new(Mutex::new(wakeups)));
        let (tx, actions) = channel();
        Ok(Self {
            em,
            fired,
            actions,
            sender: ActionSender {
                tx,
                evt: Arc::new(action_evt),
            },
            stop,
            ready_evt,
            signal_evt,
            timer,
            opts,
            config: VmConfig::default(),
            vmm,
            paused: false,
            metrics: None,
        })
    }

    /// A sender for the action channel.
    pub fn sender(&self) -> ActionSender {
        self.sender.clone()
    }

    /// The stop signal (a stop request ends [`Controller::run`]).
    pub fn stop_signal(&self) -> &StopSignal {
        &self.stop
    }

    /// The eventfd termination signals write to ([`crate::signals`]).
    pub fn signal_eventfd(&self) -> &EventFd {
        &self.signal_evt
    }

    /// The running VM, if booted.
    pub fn vmm(&mut self) -> Option<&mut Vmm> {
        self.vmm.as_mut()
    }

    /// Apply a whole configuration (the config file) as the matching actions would.
    pub fn configure(&mut self, cfg: &VmConfig) -> Result<(), ControllerError> {
        cfg.validate()?;
        if let Some(l) = &cfg.logger {
            self.handle(VmmAction::PutLogger(l.clone()))?;
        }
        if let Some(m) = &cfg.metrics {
            self.handle(VmmAction::PutMetrics(m.clone()))?;
        }
        self.config.boot_source = cfg.boot_source.clone();
        self.config.machine_config = cfg.machine_config.clone();
        self.config.vsock = cfg.vsock.clone();
        self.config.entropy = cfg.entropy.clone();
        self.config.drives = cfg.drives.clone();
        Ok(())
    }

    /// Build the VM from the configuration, install the VMM thread's seccomp filter
    /// and run the vCPUs.
    pub fn start(&mut self) -> Result<(), ControllerError> {
        let mut res = self.config.to_resources()?;
        res.console = self.opts.console.clone();
        res.boot_timer = self.opts.boot_timer;
        res.seccomp = self.opts.seccomp;
        self.start_with(&res)
    }

    /// Like [`Controller::start`] with resources from `husk run`'s flags.
    pub fn start_with(&mut self, res: &crate::builder::VmResources) -> Result<(), ControllerError> {
        let mut vmm = build_microvm_for_boot(res, &mut self.em, &self.stop, &self.ready_evt)?;
        if res.seccomp {
            // Every thread exists now (no clone is allowed later); vCPU threads and the
            // API thread installed their own filters.
            crate::seccomp::install(crate::seccomp::Thread::Vmm)?;
        } else {
            log::warn!("seccomp filters disabled (--no-seccomp): for debugging only");
        }
        vmm.set_print_memory_at_ready(res.boot_timer);
        if let Some(t) = self.opts.boot_timeout {
            crate::devices::bus::lock(&self.timer)
                .reset(t, None)
                .map_err(setup_err("arm the boot timer"))?;
        }
        if self.config.boot_source.is_none() {
            // `husk run`: record what was booted, for GET /vm/config.
            self.config.boot_source = Some(BootSource {
                kernel_image_path: res.kernel.clone(),
                initrd_path: res.initrd.clone(),
                boot_args: res.cmdline.clone(),
            });
            self.config.machine_config = Some(MachineConfig {
                vcpu_count: res.vcpus,
                mem_size_mib: res.mem_mib,
                ..MachineConfig::default()
            });
            self.config.vsock = res.vsock.as_ref().map(|v| VsockSection {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
                vsock_id: None,
            });
            self.config.entropy = res.entropy.then(EntropySection::default);
            self.config.drives = res
                .drives
                .iter()
                .map(|d| crate::config::DriveSection {
                    drive_id: d.id.clone(),
                    path_on_host: d.path.clone(),
                    is_root_device: d.root,
                    is_read_only: d.read_only,
                    partuuid: d.partuuid.clone(),
                })
                .collect();
        }
        vmm.resume()?;
        log::debug!("vCPUs running");
        self.vmm = Some(vmm);
        Ok(())
    }

    /// Run the event loop until the VM stops (or, before boot, until a termination
    /// signal); then end the vCPU threads, flush metrics and return why it stopped.
    pub fn run(&mut self) -> Result<StopReason, ControllerError> {
        loop {
            if let Some(reason) = self.stop.reason() {
                self.finish();
                return Ok(reason);
            }
            self.em.run().map_err(ControllerError::EventLoop)?;
            let fired = self.fired.swap(0, Ordering::SeqCst);
            if fired & WAKE_READY != 0 {
                self.on_ready();
            }
            if fired & WAKE_TIMER != 0 {
                let ready = self.vmm.as_ref().and_then(|v| v.ready_at_ns()).is_some();
                if !ready {
                    log::error!("the guest did not signal ready in time; stopping it");
                    self.stop.stop(StopReason::BootTimeout);
                }
            }
            if fired & WAKE_SIGNAL != 0 {
                let sig = crate::signals::term_signal().unwrap_or(libc::SIGTERM);
                log::info!("signal {sig} received; stopping");
                self.stop.stop(StopReason::Signal(sig));
            }
            while let Ok(req) = self.actions.try_recv() {
                let result = self.handle(req.action);
                let _ = req.reply.send(result);
            }
        }
    }

    fn on_ready(&mut self) {
        let _ = crate::devices::bus::lock(&self.timer).clear();
        if let Some(vmm) = self.vmm.as_mut() {
            if !vmm.memory_reported() {
                vmm.report_memory("ready");
            }
        }
        self.snapshot_at_ready();
    }

    fn finish(&mut self) {
        if let Some(vmm) = self.vmm.as_mut() {
            if !vmm.memory_reported() {
                // The guest may write the marker and stop before the loop saw the ready
                // wake-up: then the report is still the one at ready (taken now).
                if vmm.ready_at_ns().is_some() {
                    vmm.report_memory("ready");
                } else {
                    vmm.report_memory("stop (no ready marker)");
                }
            }
            vmm.shutdown();
        }
        if self.metrics.is_some() {
            if let Err(e) = self.flush_metrics() {
                log::warn!("final metrics flush failed: {e}");
            }
        }
    }

    fn state_name(&self) -> &'static str {
        match (&self.vmm, self.paused) {
            (None, _) => "Not started",
            (Some(_), false) => "Running",
            (Some(_), true) => "Paused",
        }
    }

    /// One flush's metrics: counters' increases since the previous flush.
    fn take_metrics_json(&self) -> serde_json::Value {
        let mut v = crate::metrics::take_global_json();
        if let Some(o) = v.as_object_mut() {
            let (devices, ready_us) = match &self.vmm {
                Some(vmm) => (
                    vmm.devices().take_metrics(),
                    vmm.ready_at_ns().map(|ns| ns / 1000),
                ),
                None => (Vec::new(), None),
            };
            let devices: serde_json::Map<String, serde_json::Value> = devices
                .into_iter()
                .map(|d| {
                    let id = d.id.clone();
                    (id, serde_json::to_value(d).unwrap_or_default())
                })
                .collect();
            o.insert("devices".into(), devices.into());
            o.insert(
                "boot".into(),
                serde_json::json!({ "ready_after_us": ready_us }),
            );
        }
        v
    }

    /// Queue Ctrl+Alt+Del in the i8042 keyboard (the guest kernel then restarts; with
    /// `reboot=k` through the i8042 reset, which ends the VM with status 0).
    fn send_ctrl_alt_del(&mut self) -> Result<(), ActionError> {
        let dev = self
            .vmm
            .as_ref()
            .and_then(|vmm| vmm.devices().i8042())
            .ok_or_else(|| ActionError::Failed("this microVM has no i8042 controller".into()))?;
        crate::devices::bus::lock(dev)
            .send_ctrl_alt_del()
            .map_err(|e| {
                ActionError::Failed(format!("cannot send Ctrl+Alt+Del: {}", error_chain(&e)))
            })?;
        log::info!("sent Ctrl+Alt+Del to the guest");
        Ok(())
    }

    fn flush_metrics(&mut self) -> Result<(), ActionError> {
        let body = self.take_metrics_json();
        let sink = self.metrics.as_mut().ok_or_else(|| {
            ActionError::Invalid("the metrics system is not configured: PUT /metrics first".into())
        })?;
        sink.write(body).map_err(|e| {
            ActionError::Failed(format!("cannot flush metrics: {e}: {}", source_text(&e)))
        })
    }

    /// Carry out one action.
    pub fn handle(&mut self, action: VmmAction) -> ActionResult {
        let booted = self.vmm.is_some();
        if booted && action.is_pre_boot_only() {
            return Err(ActionError::NotSupportedPostBoot(action_name(&action)));
        }
        if !booted && action.is_post_boot_only() {
            return Err(ActionError::NotSupportedPreBoot(action_name(&action)));
        }
        let invalid = |e: crate::config::ConfigError| ActionError::Invalid(e.to_string());
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                id: self.opts.id.clone(),
                state: self.state_name(),
                vmm_version: env!("CARGO_PKG_VERSION"),
                app_name: "husk",
            })),
            VmmAction::GetVersion => Ok(VmmData::Version(env!("CARGO_PKG_VERSION"))),
            VmmAction::GetVmConfig => Ok(VmmData::VmConfig(self.config.to_full_json())),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(
                self.config.machine_config.clone().unwrap_or_default(),
            )),
            VmmAction::PutBootSource(b) => {
                if b.kernel_image_path.as_os_str().is_empty() {
                    return Err(ActionError::Invalid("kernel_image_path is empty".into()));
                }
                self.config.boot_source = Some(b);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMachineConfig(m) => {
                m.validate().map_err(invalid)?;
                self.config.machine_config = Some(m);
                Ok(VmmData::Empty)
            }
            VmmAction::PatchMachineConfig(u) => {
                let m = self
                    .config
                    .machine_config
                    .clone()
                    .unwrap_or_default()
                    .patched(&u);
                m.validate().map_err(invalid)?;
                self.config.machine_config = Some(m);
                Ok(VmmData::Empty)
            }
            VmmAction::PutVsock(v) => {
                v.validate().map_err(invalid)?;
                self.config.vsock = Some(v);
                Ok(VmmData::Empty)
            }
            VmmAction::PutDrive(d) => {
                // Replace a drive with the same id (Firecracker's update before boot), or
                // add it; the resulting list must stay valid (one root device).
                let mut drives = self.config.drives.clone();
                match drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
                    Some(slot) => *slot = d,
                    None => drives.push(d),
                }
                crate::config::validate_drives(&drives).map_err(invalid)?;
                self.config.drives = drives;
                Ok(VmmData::Empty)
            }
            VmmAction::PutEntropy(e) => {
                e.validate().map_err(invalid)?;
                self.config.entropy = Some(e);
                Ok(VmmData::Empty)
            }
            VmmAction::PutLogger(l) => {
                l.validate().map_err(invalid)?;
                crate::logger::configure(&l).map_err(|e| {
                    ActionError::Invalid(format!("{e}: {}", source_text(&e)))
                })?;
                self.config.logger = Some(l);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMetrics(m) => {
                if self.metrics.is_some() {
                    return Err(ActionError::Invalid(
                        "the metrics system is already configured: it can be set once".into(),
                    ));
                }
                let sink = MetricsSink::open(&m, &self.opts.id)
                    .map_err(|e| ActionError::Invalid(format!("{e}: {}", source_text(&e))))?;
                self.metrics = Some(sink);
                self.config.metrics = Some(m);
                Ok(VmmData::Empty)
            }
            VmmAction::InstanceStart => match self.start() {
                Ok(()) => Ok(VmmData::Empty),
                Err(ControllerError::Config(crate::config::ConfigError::MissingSection(_))) => {
                    Err(ActionError::Invalid(
                        "cannot start the microVM: no boot source is configured (PUT /boot-source first)".into(),
                    ))
                }
                Err(e) => Err(ActionError::Failed(format!(
                    "cannot start the microVM: {}",
                    error_chain(&e)
                ))),
            },
            VmmAction::SendCtrlAltDel => self.send_ctrl_alt_del().map(|()| VmmData::Empty),
            VmmAction::FlushMetrics => self.flush_metrics().map(|()| VmmData::Empty),
            VmmAction::Pause => {
                if let Some(vmm) = &self.vmm {
                    vmm.pause()
                        .map_err(|e| ActionError::Failed(format!("cannot pause: {}", error_chain(&e))))?;
                }
                self.paused = true;
                Ok(VmmData::Empty)
            }
            VmmAction::CreateSnapshot(p) => self.create_snapshot(&p),
            VmmAction::LoadSnapshot(p) => self.load_snapshot(&p),
            VmmAction::Resume => {
                if let Some(vmm) = &self.vmm {
                    vmm.resume()
                        .map_err(|e| ActionError::Failed(format!("cannot resume: {}", error_chain(&e))))?;
                }
                self.paused = false;
                Ok(VmmData::Empty)
            }
        }
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

/// An error and its sources, joined with ": " (the project's one error-chain printer).
pub use husk_agent::sync::error_chain;

mod action;
mod snapshot;
#[cfg(test)]
mod tests;
