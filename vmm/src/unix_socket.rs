//! Binding a Unix socket at a path the user gave (`--api-sock`, `--vsock uds=`): a socket
//! file left by a process that is gone is replaced, a live listener is refused, and anything
//! that is not a socket is never deleted.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds `path` (non-blocking); `flag` names the option in messages (e.g. `--api-sock`).
pub fn bind_listener(path: &Path, flag: &str) -> Result<UnixListener, String> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{flag} {}: a file that is not a socket is in the way; give another path",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{flag} {}: another process serves this socket; give another path",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            format!(
                "{flag} {}: a stale socket is in the way and cannot be removed: {e}",
                path.display()
            )
        })?;
    }
    let l = UnixListener::bind(path)
        .map_err(|e| format!("{flag} {}: cannot bind: {e}", path.display()))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rf-unix-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
        let d = dir("bind");
        let path = d.join("s.sock");
        let live = bind_listener(&path, "--x").expect("first bind");
        let err = bind_listener(&path, "--x").expect_err("live listener");
        assert!(err.contains("another process serves"), "{err}");
        drop(live);
        // The file stays behind; nobody listens: replaced.
        assert!(path.exists());
        let _again = bind_listener(&path, "--x").expect("stale socket replaced");
        let file = d.join("f");
        std::fs::write(&file, b"keep me").expect("write");
        let err = bind_listener(&file, "--x").expect_err("regular file");
        assert!(err.contains("not a socket") && err.contains("--x"), "{err}");
        assert_eq!(std::fs::read(&file).expect("still there"), b"keep me");
        let _ = std::fs::remove_dir_all(&d);
    }
}
