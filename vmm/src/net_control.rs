//! [`NetControl`]: changing a running VM's network policy from another thread (library API),
//! through the live policy handle of its `user` network. Owns no thread and never blocks on
//! the device.

use std::sync::Arc;

/// Changes the network policy of a running VM from another thread (library API).
#[derive(Clone, Default)]
pub struct NetControl {
    slot: Arc<std::sync::Mutex<Option<crate::net_policy::PolicyHandle>>>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl NetControl {
    /// Binds the controls to the live policy of a starting VM.
    pub(crate) fn attach(&self, policy: crate::net_policy::PolicyHandle) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(policy);
        }
    }

    /// Called when the VM has stopped: later calls fail with [`NetControlError::Stopped`].
    pub(crate) fn mark_stopped(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
    }

    fn handle(&self) -> Option<crate::net_policy::PolicyHandle> {
        self.slot.lock().ok().and_then(|s| s.clone())
    }

    /// Replaces the policy; new flows and DNS queries are judged by it at once, and live
    /// flows it denies are cut. Fails if the VM has no `user` network (or has not started)
    /// or the policy does not compile.
    ///
    /// ```no_run
    /// # fn f(vm: &ringfence::VmHandle, policy: &policy::Policy) -> Result<(), ringfence::vm::NetControlError> {
    /// vm.net_control().set_policy(policy)?;
    /// vm.net_control().set_network_enabled(false)?; // cut everything
    /// # Ok(()) }
    /// ```
    pub fn set_policy(&self, policy: &policy::Policy) -> Result<(), NetControlError> {
        self.check_running()?;
        self.handle()
            .ok_or(NetControlError::NoUserNet)?
            .set_policy(policy)
            .map_err(NetControlError::Policy)
    }

    /// Turns the VM's network on or off; off refuses every new flow and DNS query.
    pub fn set_network_enabled(&self, enabled: bool) -> Result<(), NetControlError> {
        self.check_running()?;
        self.handle()
            .ok_or(NetControlError::NoUserNet)?
            .set_network_enabled(enabled);
        Ok(())
    }
}

impl NetControl {
    fn check_running(&self) -> Result<(), NetControlError> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NetControlError::Stopped);
        }
        Ok(())
    }
}

/// Why a [`NetControl`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetControlError {
    /// The VM has stopped.
    #[error("the VM has stopped: its network policy can no longer be changed")]
    Stopped,
    /// The VM has no user-mode network, or has not started it yet.
    #[error("the VM has no user-mode network (or has not started): use --net user (NetBackendSpec::User) and call this after Vm::start")]
    NoUserNet,
    /// The new policy does not compile.
    #[error(transparent)]
    Policy(#[from] crate::net_policy::PolicySetupError),
}
