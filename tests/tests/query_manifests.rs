//! The Kubernetes manifests validate offline against the 1.30 schemas.

use std::path::Path;
use std::process::Command;

#[test]
fn manifests_validate_against_kubernetes_1_30() {
    let Some(tool) = norn_testkit::require_tool("kubernetes-validate") else { return };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing: {files:?}");
    let out = norn_testkit::run(Command::new(tool).args(["-k", "1.30.0", "--strict"]).args(&files));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    for kind in [
        "statefulset/norn-receive",
        "deployment/norn-query",
        "service/norn-receive",
        "configmap/norn-receive-hashring",
        "secret/norn-objstore",
    ] {
        assert!(text.contains(kind), "{kind} not validated:\n{text}");
    }
}
