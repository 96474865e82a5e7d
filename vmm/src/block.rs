//! Block devices as the VMM sees it: the `--drive` settings of a VM (parsed and checked), the
//! image files opened before boot, and each virtio-blk device on its virtio-mmio window wired
//! to KVM (ioeventfd for its queue, irqfd on its GSI) and announced on the kernel command line.
//! The virtio-blk device itself lives in `devices::block`.
//!
//! Device windows: virtio-net is always window 0 (whether or not the VM has a network
//! device), drives take windows 1..=[`MAX_DRIVES`] (IRQs 6 to 21) in the order given, vsock
//! the window after the last drive ([`crate::layout::virtio_mmio_base`]).
//!
//! Guest names: Linux registers the `virtio_mmio.device=` devices in command-line order and
//! names virtio-blk disks `vda`, `vdb`, ... in the order they probe, which is that order; so
//! the VMM announces the drives in their window order and drive `n` is `/dev/vd{a+n}`
//! ([`guest_disk_name`]). A root drive adds `root=/dev/vdX rw` (or `ro`) before the user's
//! command line, so a `root=` of the user's own still wins.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use devices::block::{Block, BlockConfig, BlockMetrics, DiskImage, ImageError};
use devices::virtio::mmio::MmioTransport;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::io::MmioDevice;
use crate::kvm::KvmError;

/// Most drives one VM may have: Kata's Firecracker driver gives 9 (the rootfs and eight
/// hot-swap placeholders); the IOAPIC's 24 pins bound it.
pub const MAX_DRIVES: usize = 16;
/// Longest drive id: the guest reads at most 20 bytes of it (`VIRTIO_BLK_T_GET_ID`).
pub const MAX_ID_LEN: usize = devices::block::ID_BYTES;

/// One virtio-blk drive backed by a raw image file (`--drive`, Firecracker's `PUT /drives`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSettings {
    /// The drive's id (Firecracker's `drive_id`); also the serial the guest reads
    /// (`VIRTIO_BLK_T_GET_ID`, first 20 bytes).
    pub id: String,
    /// The raw image file.
    pub path: PathBuf,
    /// Opened read-only and offered with `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The guest's root filesystem: `root=/dev/vdX` is added to the command line.
    pub root: bool,
    /// An empty image is a drive of no sectors rather than an error: a placeholder to be
    /// swapped for a real image while the guest runs (Firecracker's API allows it; `--drive`
    /// refuses an empty file as a likely mistake).
    pub allow_empty: bool,
}

/// The window index of drive `n` (0-based).
pub fn drive_window(n: usize) -> u32 {
    1 + n as u32
}

/// The name Linux gives drive `n` (0-based): `vda`, `vdb`, ...
pub fn guest_disk_name(n: usize) -> String {
    let letter = char::from(b'a' + (n % 26) as u8);
    format!("vd{letter}")
}

/// One `--drive` value as written: `path=FILE[,id=ID][,ro][,root]` (the id defaults to
/// `drive<N>` once its position is known, see [`settings_from_args`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveArg {
    /// The `id=` given, if any.
    pub id: Option<String>,
    /// The `path=` given.
    pub path: PathBuf,
    /// `ro` was given.
    pub read_only: bool,
    /// `root` was given.
    pub root: bool,
}

impl FromStr for DriveArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected path=FILE[,id=ID][,ro][,root]";
        let (mut id, mut path, mut read_only, mut root) = (None, None, false, false);
        for part in s.split(',') {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (part, None),
            };
            let dup = |what: &str| format!("bad --drive {s:?}: {what} given twice");
            match (key, value) {
                ("path", Some(v)) if !v.is_empty() => {
                    if path.replace(PathBuf::from(v)).is_some() {
                        return Err(dup("path"));
                    }
                }
                ("id", Some(v)) => {
                    check_id(v).map_err(|why| format!("bad --drive {s:?}: {why}"))?;
                    if id.replace(v.to_string()).is_some() {
                        return Err(dup("id"));
                    }
                }
                ("ro", None) => read_only = true,
                ("root", None) => root = true,
                ("path" | "id", _) => {
                    return Err(format!("bad --drive {s:?}: {key}= needs a value; {usage}"))
                }
                ("ro" | "root", Some(_)) => {
                    return Err(format!(
                        "bad --drive {s:?}: {key} is a flag and takes no value; {usage}"
                    ))
                }
                _ => {
                    return Err(format!(
                        "bad --drive {s:?}: unknown key {key:?}; {usage} (a path cannot contain commas)"
                    ))
                }
            }
        }
        let path = path.ok_or_else(|| format!("bad --drive {s:?}: no path=FILE; {usage}"))?;
        Ok(DriveArg {
            id,
            path,
            read_only,
            root,
        })
    }
}

/// Whether `id` can name a drive: 1 to 20 bytes of letters, digits, `_`, `-` and `.`.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "drive id {id:?} must have 1 to {MAX_ID_LEN} characters (the guest reads it as the disk's serial)"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "drive id {id:?} contains {c:?}; use letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// The drives of `--drive` values in order, with default ids (`drive0`, `drive1`, ...), checked
/// with [`validate`].
pub fn settings_from_args(args: Vec<DriveArg>) -> Result<Vec<DriveSettings>, DriveError> {
    let drives: Vec<DriveSettings> = args
        .into_iter()
        .enumerate()
        .map(|(n, a)| DriveSettings {
            id: a.id.unwrap_or_else(|| format!("drive{n}")),
            path: a.path,
            read_only: a.read_only,
            root: a.root,
            allow_empty: false,
        })
        .collect();
    validate(&drives)?;
    Ok(drives)
}

/// Checks a VM's drives: at most [`MAX_DRIVES`], valid and distinct ids, at most one root.
pub fn validate(drives: &[DriveSettings]) -> Result<(), DriveError> {
    if drives.len() > MAX_DRIVES {
        return Err(DriveError::TooMany(drives.len()));
    }
    for (n, d) in drives.iter().enumerate() {
        check_id(&d.id).map_err(|why| DriveError::Settings(format!("--drive {}: {why}", d.id)))?;
        if let Some(first) = drives[..n].iter().find(|e| e.id == d.id) {
            return Err(DriveError::Settings(format!(
                "two drives have the id {:?} ({} and {}); give each --drive its own id=",
                d.id,
                first.path.display(),
                d.path.display()
            )));
        }
        if d.root {
            if let Some(first) = drives[..n].iter().find(|e| e.root) {
                return Err(DriveError::Settings(format!(
                    "two drives are marked root ({:?} and {:?}); a guest has one root filesystem",
                    first.id, d.id
                )));
            }
        }
    }
    Ok(())
}

/// The command-line words for the root drive, if any: `root=/dev/vdX rw` (or `ro`).
pub fn root_cmdline(drives: &[DriveSettings]) -> Option<String> {
    let (n, d) = drives.iter().enumerate().find(|(_, d)| d.root)?;
    let mode = if d.read_only { "ro" } else { "rw" };
    Some(format!("root=/dev/{} {mode}", guest_disk_name(n)))
}

/// Errors setting up the drives.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// More drives than a VM may have.
    #[error("{0} drives given; a VM may have at most {MAX_DRIVES}")]
    TooMany(usize),
    /// The settings contradict each other (duplicate ids, two roots, a bad id).
    #[error("{0}")]
    Settings(String),
    /// The image file cannot be used.
    #[error("--drive {id}: {source}")]
    Image {
        /// The drive's id.
        id: String,
        /// What is wrong with the file, naming it.
        #[source]
        source: ImageError,
    },
    /// The device or its transport could not be created.
    #[error("--drive {id}: virtio-blk: {reason}")]
    Device {
        /// The drive's id.
        id: String,
        /// What failed.
        reason: String,
    },
    /// Registering eventfds with KVM failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// A drive whose image is open, ready to be attached.
#[derive(Debug)]
pub struct PreparedDrive {
    /// The drive's settings.
    pub settings: DriveSettings,
    /// The open image.
    pub image: DiskImage,
}

/// Checks the drives and opens every image with its mode, before anything else is created,
/// so a missing or unwritable file fails before boot.
pub fn prepare(drives: &[DriveSettings]) -> Result<Vec<PreparedDrive>, DriveError> {
    validate(drives)?;
    drives
        .iter()
        .map(|d| {
            let image =
                DiskImage::open_with(&d.path, d.read_only, d.allow_empty).map_err(|source| {
                    DriveError::Image {
                        id: d.id.clone(),
                        source,
                    }
                })?;
            Ok(PreparedDrive {
                settings: d.clone(),
                image,
            })
        })
        .collect()
}

/// A drive ready to be placed on the bus.
pub struct AttachedDrive {
    /// Guest-physical base of the window.
    pub base: u64,
    /// The device, as the bus takes it.
    pub device: Box<dyn MmioDevice>,
    /// The command-line word that announces it to the guest.
    pub cmdline: String,
    /// The device's counters.
    pub metrics: Arc<BlockMetrics>,
    /// Swaps the drive's image while the guest runs.
    pub swap: devices::block::DriveSwap,
}

/// Creates the virtio-blk device of drive `n` (0-based) on its window and wires its eventfds
/// into `vm`; its worker thread is started by `launcher` when the guest activates it.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    n: usize,
    drive: PreparedDrive,
    launcher: devices::thread::ThreadLauncher,
) -> Result<AttachedDrive, DriveError> {
    let id = drive.settings.id;
    let device_err = |reason: String| DriveError::Device {
        id: id.clone(),
        reason,
    };
    let config = BlockConfig {
        id: id.clone(),
        launcher,
        ..Default::default()
    };
    let block = Block::new(config, drive.image).map_err(|e| device_err(e.to_string()))?;
    let metrics = block.metrics();
    let swap = block.swap_handle();
    let transport =
        MmioTransport::new(mem.clone(), Box::new(block)).map_err(|e| device_err(e.to_string()))?;
    let names = crate::virtio_window::WiringNames {
        ioevent: "KVM_IOEVENTFD (virtio-blk queue notify)",
        irqfd: "KVM_IRQFD (virtio-blk)",
    };
    let placed = crate::virtio_window::place(vm, transport, drive_window(n), names, ())?;
    Ok(AttachedDrive {
        base: placed.base,
        device: placed.device,
        cmdline: placed.cmdline,
        metrics,
        swap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(s: &str) -> Result<DriveArg, String> {
        s.parse()
    }

    #[test]
    fn drive_values_parse_or_name_what_is_wrong() {
        assert_eq!(
            arg("path=/img/root.ext4,id=rootfs,ro,root").unwrap(),
            DriveArg {
                id: Some("rootfs".into()),
                path: "/img/root.ext4".into(),
                read_only: true,
                root: true
            }
        );
        assert_eq!(arg("path=a.img").unwrap().id, None);
        for (bad, needle) in [
            ("a.img", "unknown key \"a.img\""),
            ("path=a.img,rw", "unknown key \"rw\""),
            ("path=a.img,size=1G", "unknown key \"size\""),
            ("id=x", "no path=FILE"),
            ("path=", "path= needs a value"),
            ("path=a,path=b", "path given twice"),
            ("path=a,ro=yes", "ro is a flag"),
            ("path=a,id=", "1 to 20 characters"),
            ("path=a,id=has space", "contains ' '"),
            ("path=a,id=abcdefghijklmnopqrstu", "1 to 20 characters"),
        ] {
            let e = arg(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "names the value: {e}");
        }
    }

    #[test]
    fn drives_get_default_ids_and_conflicts_are_refused() {
        let args = |v: &[&str]| -> Vec<DriveArg> { v.iter().map(|s| arg(s).unwrap()).collect() };
        let d = settings_from_args(args(&["path=a", "path=b,id=data", "path=c,root,ro"])).unwrap();
        let ids: Vec<&str> = d.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["drive0", "data", "drive2"]);
        assert_eq!(root_cmdline(&d).as_deref(), Some("root=/dev/vdc ro"));
        assert_eq!(root_cmdline(&d[..2]), None);

        let e = settings_from_args(args(&["path=a,id=x", "path=b,id=x"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("two drives have the id \"x\""), "{e}");
        let e = settings_from_args(args(&["path=a,root", "path=b,root"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("two drives are marked root (\"drive0\" and \"drive1\")"),
            "{e}"
        );
        let too_many: Vec<&str> = (0..=MAX_DRIVES).map(|_| "path=a").collect();
        let e = settings_from_args(args(&too_many)).unwrap_err().to_string();
        assert!(
            e.contains("17 drives given; a VM may have at most 16"),
            "{e}"
        );
    }

    #[test]
    fn guest_names_follow_window_order() {
        assert_eq!(guest_disk_name(0), "vda");
        assert_eq!(guest_disk_name(7), "vdh");
        assert_eq!(drive_window(0), 1);
    }
}
