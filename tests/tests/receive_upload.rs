//! Blocks cut from a receiver's head are uploaded with a Thanos meta.json (external
//! labels, source `receive`, resolution 0), meta.json last, to a FILESYSTEM bucket and
//! to S3 (a real `moto_server` started by the test). The data stays queryable across
//! the cut and a restart, and shipped blocks are not uploaded twice.

mod receive_support;

use std::process::Command;
use std::time::{Duration, Instant};

use norn_testkit::receive::Receiver;
use norn_testkit::{ProcessGuard, free_port, require_tool, wait_ready};
use receive_support::{eq, now_ms, post, series, write_body};

/// Talks to the S3 server with boto3 (installed with moto), independently of our client.
fn s3(port: u16, op: &str, key: &str) -> String {
    let script = r#"
import sys, boto3
port, op, key = sys.argv[1], sys.argv[2], sys.argv[3]
c = boto3.client("s3", endpoint_url="http://127.0.0.1:" + port, aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1")
if op == "create":
    c.create_bucket(Bucket="norn")
elif op == "list":
    for o in c.list_objects_v2(Bucket="norn", Prefix="blocks/").get("Contents", []):
        print(o["Key"])
else:
    sys.stdout.write(c.get_object(Bucket="norn", Key=key)["Body"].read().decode())
"#;
    let out = Command::new("python3").args(["-c", script, &port.to_string(), op, key]).output().expect("python3");
    assert!(out.status.success(), "boto3 {op}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Writes 4 hours of one series (so the head spans more than 1.5 block ranges) and
/// waits for the receiver to cut and ship a block; returns the sample timestamps.
async fn write_and_wait_for_block(r: &Receiver, listed: impl Fn() -> Vec<String>) -> Vec<i64> {
    let end = now_ms() / 60_000 * 60_000;
    let ts: Vec<i64> = (0..240).map(|i| end - (239 - i) * 60_000).collect();
    let body =
        write_body(&[(vec![("__name__", "norn_upload"), ("job", "e2e")], ts.iter().map(|&t| (t, 1.0)).collect())]);
    let (code, text) = post(r.rw_port, Some("team-up"), &body);
    assert_eq!(code, 204, "{text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys = listed();
        if keys.iter().any(|k| k.ends_with("/meta.json")) {
            assert!(keys.iter().any(|k| k.ends_with("/index")), "{keys:?}");
            assert!(keys.iter().any(|k| k.contains("/chunks/000001")), "{keys:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no block uploaded; log:\n{}", r.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ts
}

async fn all_samples(r: &Receiver) -> Vec<i64> {
    let got = series(&r.grpc_addr(), vec![eq("__name__", "norn_upload")], 0, i64::MAX).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    got[0].samples.iter().map(|s| s.0).collect()
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_uploaded_to_a_filesystem_bucket_with_thanos_meta() {
    let work = norn_testkit::tempdir().unwrap();
    let bucket = work.path().join("bucket");
    let cfg = format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display());
    let extra = vec![
        format!("--objstore.config={cfg}"),
        "--tsdb.maintenance-interval=500ms".into(),
        "--label=replica=\"a\"".into(),
    ];
    let mut r = Receiver::new("up0", work.path(), &extra);
    r.start();
    let ts = write_and_wait_for_block(&r, || files_under(&bucket)).await;
    let metas: Vec<String> = files_under(&bucket).into_iter().filter(|k| k.ends_with("meta.json")).collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bucket.join(&metas[0])).unwrap()).unwrap();
    let th = &meta["thanos"];
    assert_eq!(th["source"], "receive");
    assert_eq!(th["labels"]["tenant_id"], "team-up");
    assert_eq!(th["labels"]["replica"], "a");
    assert_eq!(th["downsample"]["resolution"], 0);
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["compaction"]["level"], 1);
    assert_eq!(all_samples(&r).await, ts, "samples across block and head");

    let shipped = std::fs::read_to_string(r.data_dir.join("team-up/thanos.shipper.json")).unwrap();
    assert!(shipped.contains("uploaded"), "{shipped}");
    r.stop();
    let before = files_under(&bucket);
    r.start();
    assert_eq!(all_samples(&r).await, ts, "after restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(files_under(&bucket), before, "a shipped block was uploaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_uploaded_to_s3() {
    let Some(moto) = require_tool("moto_server") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let port = free_port();
    let _moto = ProcessGuard::spawn(
        "moto_server",
        Command::new(moto).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        &work.path().join("moto.log"),
    );
    assert!(wait_ready(port, "/", Duration::from_secs(60)), "moto_server not ready");
    s3(port, "create", "");
    let cfg = format!(
        "type: S3\nconfig:\n  bucket: norn\n  endpoint: 127.0.0.1:{port}\n  insecure: true\n  access_key: test\n  secret_key: test\n  region: us-east-1\nprefix: blocks\n"
    );
    let extra = vec![format!("--objstore.config={cfg}"), "--tsdb.maintenance-interval=500ms".into()];
    let mut r = Receiver::new("s3r", work.path(), &extra);
    r.start();
    let list = || s3(port, "list", "").lines().map(String::from).collect::<Vec<_>>();
    let ts = write_and_wait_for_block(&r, list).await;
    let keys = list();
    let meta_key = keys.iter().find(|k| k.ends_with("/meta.json")).unwrap();
    let meta = s3(port, "get", meta_key);
    assert!(meta.contains("\"source\": \"receive\""), "{meta}");
    assert!(meta.contains("\"tenant_id\": \"team-up\""), "{meta}");
    assert_eq!(all_samples(&r).await, ts);
}
