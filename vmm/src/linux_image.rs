//! `ringfence run --linux`: the Linux guest image built by `cargo xtask image` (bzImage +
//! initramfs with the guest agent), found in `~/.cache/ringfence/linux/` or
//! `$RINGFENCE_LINUX_IMAGE`, and the command line that tells the agent what to run.

use std::path::PathBuf;

/// Environment variable naming the image directory explicitly.
pub const IMAGE_ENV: &str = "RINGFENCE_LINUX_IMAGE";

/// The kernel and initramfs of the Linux guest image.
#[derive(Clone, Debug)]
pub struct LinuxImage {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs (cpio.gz) with busybox and the agent.
    pub initrd: PathBuf,
}

/// Finds the image, or says where it looked and how to build it.
pub fn find() -> Result<LinuxImage, String> {
    let dir = match std::env::var_os(IMAGE_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            PathBuf::from(home).join(".cache/ringfence/linux")
        }
    };
    let image = LinuxImage {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initramfs.cpio.gz"),
    };
    if image.kernel.is_file() && image.initrd.is_file() {
        Ok(image)
    } else {
        Err(format!(
            "no Linux guest image in {} (needs bzImage and initramfs.cpio.gz); build it with `cargo xtask image`, or set {IMAGE_ENV}",
            dir.display()
        ))
    }
}

/// The kernel command line that makes the agent run `argv` and report its status.
pub fn cmdline(argv: &[String], extra: &str) -> Result<String, String> {
    let cmd =
        ringfence_agent::protocol::cmd_param(argv).map_err(|e| format!("the command: {e}"))?;
    let mut line = format!("console=ttyS0 reboot=k panic=-1 quiet {cmd}");
    if !extra.trim().is_empty() {
        line.push(' ');
        line.push_str(extra.trim());
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_reaches_the_agent_encoded() {
        let line = cmdline(&["sh".into(), "-c".into(), "echo hi; exit 7".into()], "").unwrap();
        assert!(line.starts_with("console=ttyS0"));
        let word = line
            .split(' ')
            .find(|w| w.starts_with("ringfence.cmd="))
            .unwrap();
        let decoded =
            ringfence_agent::protocol::decode_cmd(word.trim_start_matches("ringfence.cmd="))
                .unwrap();
        let expected: Vec<Vec<u8>> = ["sh", "-c", "echo hi; exit 7"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(decoded, expected);
        assert!(cmdline(&[], "").is_err());
    }
}
