//! Errors of the interception proxy: each says what to fix.

/// Why the proxy could not be set up, or a flow not be served.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The CA could not be made or loaded.
    #[error("TLS interception CA: {0}")]
    Ca(String),
    /// A leaf certificate could not be minted.
    #[error("cannot mint a certificate for {name:?}: {reason}")]
    Leaf {
        /// The server name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// A file named by the configuration could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// What the file is for (`--tls-ca-cert`, ...).
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A setting is malformed or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The proxy thread's runtime could not start.
    #[error("cannot start the TLS proxy: {0}")]
    Start(#[source] std::io::Error),
}
