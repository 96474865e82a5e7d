//! `PUT /drives/{id}`, `PATCH /drives/{id}` and `PUT /vsock`: collected before boot into the
//! VM configuration's drives and vsock device; a `PATCH` after boot gives a running drive a
//! new backing file (Kata's hot-swap of placeholder drives).

use super::{parse, ApiState, Reply, AFTER_START};
use crate::api::model::{Drive, PartialDrive, Vsock};
use crate::block::{DriveSettings, MAX_DRIVES};
use crate::vsock::VsockSettings;

/// Whether a Firecracker `RateLimiter` value limits nothing: absent, `null`, `{}` or buckets
/// that are themselves null (Kata sends `{}` for "no limit").
pub(super) fn limits_nothing(limiter: Option<&serde_json::Value>) -> bool {
    match limiter {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(m)) => m.values().all(serde_json::Value::is_null),
        Some(_) => false,
    }
}

impl ApiState {
    pub(super) fn put_drive(&mut self, id: &str, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let d: Drive = match parse("drives", body) {
            Ok(d) => d,
            Err(r) => return r,
        };
        if d.drive_id != id {
            return Reply::fault(format!(
                "drive_id {:?} does not match the path's {id:?}",
                d.drive_id
            ));
        }
        if let Some(why) = unsupported_drive_field(&d) {
            return Reply::fault(why);
        }
        let Some(path) = &d.path_on_host else {
            return Reply::fault("path_on_host is required: the raw image file of the drive");
        };
        if let Err(r) = self.readable("path_on_host", path) {
            return r;
        }
        if d.is_root_device {
            if let Some(other) = self
                .drives
                .iter()
                .find(|o| o.is_root_device && o.drive_id != id)
            {
                return Reply::fault(format!(
                    "drive {:?} is already the root device; only one drive can be",
                    other.drive_id
                ));
            }
        }
        let count = self.drives.len();
        match self.drives.iter_mut().find(|o| o.drive_id == id) {
            Some(existing) => *existing = d,
            None if count >= MAX_DRIVES => {
                return Reply::fault(format!(
                    "ringfence gives a VM at most {MAX_DRIVES} drives; {id:?} would be one more"
                ))
            }
            None => self.drives.push(d),
        }
        Reply::no_content()
    }

    pub(super) fn patch_drive(&mut self, id: &str, body: &[u8]) -> Reply {
        let p: PartialDrive = match parse("drives", body) {
            Ok(p) => p,
            Err(r) => return r,
        };
        if p.drive_id != id {
            return Reply::fault(format!(
                "drive_id {:?} does not match the path's {id:?}",
                p.drive_id
            ));
        }
        if !limits_nothing(p.rate_limiter.as_ref()) {
            return Reply::fault("rate limiters are not supported");
        }
        let Some(vm) = &self.vm else {
            return Reply::fault(
                "PATCH /drives is only valid after InstanceStart; before it, PUT the drive again",
            );
        };
        if !self.drives.iter().any(|d| d.drive_id == id) {
            return Reply::fault(format!(
                "no drive {id:?}: PUT /drives/{id} before InstanceStart"
            ));
        }
        let Some(path) = p.path_on_host else {
            // Firecracker accepts a PATCH that only touches the rate limiter.
            return Reply::no_content();
        };
        match vm.update_drive(id, path.as_ref()) {
            Ok(()) => {
                if let Some(d) = self.drives.iter_mut().find(|d| d.drive_id == id) {
                    d.path_on_host = Some(path);
                }
                Reply::no_content()
            }
            Err(e) => Reply::fault(format!("drive {id:?}: {e}")),
        }
    }

    pub(super) fn put_vsock(&mut self, body: &[u8]) -> Reply {
        if self.started() {
            return Reply::fault(AFTER_START);
        }
        let v: Vsock = match parse("vsock", body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
            return Reply::fault(format!(
                "guest_cid {} is out of range: give 3 or more (0-2 are reserved), below 2^32",
                v.guest_cid
            ));
        }
        if v.uds_path.is_empty() {
            return Reply::fault(
                "uds_path is empty: give the Unix socket host programs connect to",
            );
        }
        self.vsock = Some(v);
        Reply::no_content()
    }

    /// The drives and the vsock device as the VM configuration takes them.
    pub(super) fn device_settings(&self) -> (Vec<DriveSettings>, Option<VsockSettings>) {
        let drives = self
            .drives
            .iter()
            .map(|d| DriveSettings {
                id: d.drive_id.clone(),
                path: d.path_on_host.clone().unwrap_or_default().into(),
                read_only: d.is_read_only.unwrap_or(false),
                root: d.is_root_device,
                allow_empty: true,
            })
            .collect();
        let vsock = self.vsock.as_ref().map(|v| VsockSettings {
            guest_cid: v.guest_cid as u32,
            uds_path: v.uds_path.clone().into(),
        });
        (drives, vsock)
    }
}

/// What in `d` ringfence cannot do, said so the caller knows what to change.
fn unsupported_drive_field(d: &Drive) -> Option<String> {
    if d.socket.is_some() {
        return Some("socket (vhost-user-blk) is not supported: give path_on_host".into());
    }
    if d.partuuid.is_some() {
        return Some(
            "partuuid is not supported: leave it out and name the root in boot_args (root=/dev/vda1)"
                .into(),
        );
    }
    if !limits_nothing(d.rate_limiter.as_ref()) {
        return Some("rate limiters are not supported".into());
    }
    if let Some(c) = d
        .cache_type
        .as_deref()
        .filter(|c| !["Unsafe", "Writeback"].contains(c))
    {
        return Some(format!("cache_type {c:?}: expected Unsafe or Writeback"));
    }
    if let Some(e) = d
        .io_engine
        .as_deref()
        .filter(|e| !["Sync", "Async"].contains(e))
    {
        return Some(format!("io_engine {e:?}: expected Sync or Async"));
    }
    None
}
