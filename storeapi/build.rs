//! Generates the wire types and gRPC stubs from `proto/` with protox (pure Rust; no
//! `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/prometheus/types.proto",
        "proto/prometheus/remote.proto",
        "proto/io/prometheus/write/v2/types.proto",
        "proto/io/prometheus/client/metrics.proto",
        "proto/thanos/labels.proto",
        "proto/thanos/prompb.proto",
        "proto/thanos/types.proto",
        "proto/thanos/rpc.proto",
        "proto/thanos/info.proto",
        "proto/thanos/exemplars.proto",
        "proto/thanos/metadata.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
