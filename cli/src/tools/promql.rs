//! `norn tools promql-test FILE...`: runs upstream promqltest scripts against Norn's engine.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use norn_promql::conformance::{Options, run_file};

/// Arguments of `norn tools promql-test`.
#[derive(Debug, Args)]
pub struct PromqlTestArgs {
    /// promqltest script files (Prometheus's `promql/promqltest/testdata/*.test` format).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs every file, prints each failing case and a final `N passed, M failed, K skipped`
/// line. Returns whether everything passed (no failures and no script errors).
pub fn run(args: PromqlTestArgs) -> Result<bool> {
    let opts = Options::default();
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut ok = true;
    for path in &args.files {
        let rep = run_file(path, &opts);
        for f in &rep.failures {
            // The report names the file without its directory; print the path given so
            // the location can be opened directly.
            println!("{}:{}: {}", path.display(), f.line, f.command);
            println!("  expected: {}", f.expected);
            println!("  got:      {}", f.got);
        }
        if let Some(e) = &rep.error {
            println!("{}: script error: {e}", path.display());
            ok = false;
        }
        passed += rep.passed;
        failed += rep.failed();
        skipped += rep.skipped.len();
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(ok && failed == 0)
}
