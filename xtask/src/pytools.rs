//! Python tools from PyPI the tests use, installed into a virtual environment under
//! `~/.cache/ringfence/` (never into the system's Python): schemathesis, which drives the
//! Firecracker-API conformance test (`tests/tests/api_conformance.rs`) from Firecracker's
//! OpenAPI description.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{cache_dir, done, run, step};

/// The schemathesis release the conformance test was written against.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The schemathesis binary, installed first when missing or of another version.
pub fn schemathesis() -> Result<PathBuf> {
    let dir = cache_dir()?.join("schemathesis");
    let bin = dir.join("venv/bin/schemathesis");
    let stamp = dir.join("installed");
    if bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == SCHEMATHESIS) {
        return Ok(bin);
    }
    let t = step(&format!("{SCHEMATHESIS} from PyPI into {}", dir.display()));
    std::fs::create_dir_all(&dir)?;
    run(Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(dir.join("venv")))
    .context("creating a Python venv (apt-get install python3-venv)")?;
    run(Command::new(dir.join("venv/bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SCHEMATHESIS,
    ]))
    .context("installing schemathesis from PyPI")?;
    std::fs::write(&stamp, SCHEMATHESIS)?;
    done(t);
    Ok(bin)
}
