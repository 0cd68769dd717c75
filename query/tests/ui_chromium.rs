//! The built-in UI in headless Chromium: the page runs its script, queries the API and
//! renders the table and the graph.

mod common;

use std::sync::Arc;

use common::{FakeStore, serve_store, start_querier};
use norn_model::Labels;
use tokio_util::sync::CancellationToken;

fn chromium() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|b| dirs.iter().map(move |d| d.join(b)))
        .find(|p| p.is_file())
}

fn dump_dom(browser: &std::path::Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_renders_table_and_graph_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var("NORN_ALLOW_MISSING_TOOLS").as_deref() == Ok("1") {
            eprintln!("skipping: chromium not installed");
            return;
        }
        panic!("chromium is needed (apt-get install chromium) or set NORN_ALLOW_MISSING_TOOLS=1");
    };
    let now = norn_query::timeparse::now_ms();
    let samples: Vec<(i64, f64)> = (0..120).map(|k| (now - 3_600_000 + k * 30_000, (k % 10) as f64)).collect();
    let d = Arc::new(vec![
        (Labels::from_pairs([("__name__", "ui_metric"), ("job", "alpha")]), samples.clone()),
        (Labels::from_pairs([("__name__", "ui_metric"), ("job", "beta")]), samples),
    ]);
    let stop = CancellationToken::new();
    let ep = serve_store(FakeStore::new(Labels::from_pairs([("replica", "r0")]), d), stop.clone()).await.to_string();
    let q = start_querier(norn_query::Args {
        endpoints: vec![ep],
        replica_labels: vec!["replica".into()],
        ..Default::default()
    })
    .await;
    let base = format!("http://{}/", q.http);

    let b = browser.clone();
    let url = format!("{base}?g0.expr=ui_metric&tab=table");
    let table = tokio::task::spawn_blocking(move || dump_dom(&b, &url)).await.unwrap();
    assert!(table.contains("ui_metric{job=\"alpha\"}"), "table lacks series:\n{table}");
    assert!(table.contains("ui_metric{job=\"beta\"}"), "table lacks series:\n{table}");

    let url = format!("{base}?g0.expr=ui_metric&tab=graph");
    let graph = tokio::task::spawn_blocking(move || dump_dom(&browser, &url)).await.unwrap();
    assert_eq!(graph.matches("<polyline").count(), 2, "graph lacks two lines:\n{graph}");
    q.stop.cancel();
    stop.cancel();
}
