//! Runs promqltest scripts: `cargo run -p norn-promql --example promql_test -- FILE...`.

fn main() {
    let opts = norn_promql::conformance::Options::default();
    let (mut p, mut f, mut s) = (0, 0, 0);
    for arg in std::env::args().skip(1) {
        let rep = norn_promql::conformance::run_file(std::path::Path::new(&arg), &opts);
        println!("{rep}");
        if std::env::var_os("SHOW_SKIPS").is_some() {
            for s in &rep.skipped {
                println!("skip {}:{}: {}", rep.file, s.line, s.reason);
            }
        }
        p += rep.passed;
        f += rep.failed();
        s += rep.skipped.len();
    }
    println!("{p} passed, {f} failed, {s} skipped");
}
