//! Helpers for Norn's integration tests: locating the `norn` binary and reference tools
//! (promtool, prometheus), running them with captured output, and temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use tempfile::{TempDir, tempdir};

/// The `norn` binary built for this test run.
///
/// Integration tests live in their own crate, so Cargo does not hand them
/// `CARGO_BIN_EXE_norn`; the binary sits next to the test executable's `deps/` folder.
/// `NORN_BIN` overrides the lookup.
pub fn norn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NORN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let bin = profile_dir.join(format!("norn{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not found: build it first with `cargo build -p norn`", bin.display());
    bin
}

/// A reference tool from PATH (e.g. `promtool`), or `None` when it is not installed.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// A reference tool that the test cannot do without. Missing tools fail the test rather
/// than skipping it, unless `NORN_ALLOW_MISSING_TOOLS=1`, so CI cannot pass vacuously.
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    match which(tool) {
        Some(p) => Some(p),
        None if std::env::var("NORN_ALLOW_MISSING_TOOLS").as_deref() == Ok("1") => {
            eprintln!("skipping: {tool} not installed and NORN_ALLOW_MISSING_TOOLS=1");
            None
        }
        None => panic!("{tool} is not installed; install it (see .ci/run) or set NORN_ALLOW_MISSING_TOOLS=1"),
    }
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to completion and returns its output whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}
