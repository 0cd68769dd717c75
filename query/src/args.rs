//! Command-line flags of `norn query`, named as Thanos's querier names them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `norn query`. Every flag can also come from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Listen address of the HTTP API and UI.
    #[arg(long = "http-address", env = "NORN_QUERY_HTTP_ADDRESS", default_value = "0.0.0.0:10902")]
    pub http_address: SocketAddr,
    /// Listen address of the StoreAPI/Info gRPC server.
    #[arg(long = "grpc-address", env = "NORN_QUERY_GRPC_ADDRESS", default_value = "0.0.0.0:10901")]
    pub grpc_address: SocketAddr,
    /// StoreAPI endpoints: `host:port`, `dns+host:port`, `dnssrv+_grpc._tcp.name`,
    /// `dnssrvnoa+_grpc._tcp.name`. Repeatable; comma-separated in the environment.
    #[arg(long = "endpoint", env = "NORN_QUERY_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Files with endpoint lists (Prometheus file SD format, `targets` of each group; JSON
    /// or YAML by extension: .json, .yml, .yaml), re-read on every refresh. The file name
    /// may be a pattern (`*`, `?`, `[...]`, as Prometheus's file SD): matching files are
    /// added as they appear and dropped when they go.
    #[arg(long = "endpoint.sd-files", env = "NORN_QUERY_ENDPOINT_SD_FILES", value_delimiter = ',')]
    pub endpoint_sd_files: Vec<PathBuf>,
    /// How often DNS names and SD files are resolved again and endpoints probed with Info.
    #[arg(long = "endpoint.refresh-interval", env = "NORN_QUERY_ENDPOINT_REFRESH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub endpoint_refresh_interval: Duration,
    /// Timeout of one Info probe.
    #[arg(long = "endpoint.info-timeout", env = "NORN_QUERY_ENDPOINT_INFO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub endpoint_info_timeout: Duration,
    /// DNS server (`ip:port`) for `dns+`/`dnssrv+` names; default: the first nameserver in
    /// /etc/resolv.conf.
    #[arg(long = "endpoint.dns-server", env = "NORN_QUERY_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// Labels treated as replica labels for deduplication. Repeatable.
    #[arg(long = "query.replica-label", env = "NORN_QUERY_REPLICA_LABELS", value_delimiter = ',')]
    pub replica_labels: Vec<String>,
    /// Whether a query answers with warnings when some endpoints fail, when the request
    /// does not say (`partial_response`). `--no-query.partial-response` (or
    /// `--query.partial-response=false`) disables it.
    #[arg(long = "query.partial-response", env = "NORN_QUERY_PARTIAL_RESPONSE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", overrides_with = "no_partial_response")]
    pub partial_response: bool,
    /// `--no-query.partial-response`: kingpin's negated form, as Thanos documents it.
    #[arg(long = "no-query.partial-response", hide = true, overrides_with = "partial_response")]
    pub no_partial_response: bool,
    /// Longest a query may run.
    #[arg(long = "query.timeout", env = "NORN_QUERY_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most queries evaluated at once; further ones wait.
    #[arg(long = "query.max-concurrent", env = "NORN_QUERY_MAX_CONCURRENT", default_value_t = 20)]
    pub max_concurrent: usize,
    /// How far back an instant selector looks for a sample.
    #[arg(long = "query.lookback-delta", env = "NORN_QUERY_LOOKBACK_DELTA", default_value = "5m", value_parser = parse_duration)]
    pub lookback_delta: Duration,
    /// Most samples one query may hold in memory.
    #[arg(long = "query.max-samples", env = "NORN_QUERY_MAX_SAMPLES", default_value_t = 50_000_000)]
    pub max_samples: usize,
    /// Whether deduplication on the replica labels is on when the request does not say (`dedup`).
    #[arg(long = "query.dedup", env = "NORN_QUERY_DEDUP", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", overrides_with = "no_dedup")]
    pub dedup: bool,
    /// `--no-query.dedup`.
    #[arg(long = "no-query.dedup", hide = true, overrides_with = "dedup")]
    pub no_dedup: bool,
    /// HTTP header carrying the tenant, forwarded to endpoints as gRPC metadata.
    #[arg(long = "query.tenant-header", env = "NORN_QUERY_TENANT_HEADER", default_value = "THANOS-TENANT")]
    pub tenant_header: String,
    /// Tenant used when a request carries no tenant header.
    #[arg(long = "query.default-tenant-id", env = "NORN_QUERY_DEFAULT_TENANT_ID", default_value = "default-tenant")]
    pub default_tenant: String,
    /// Label holding the tenant, which `--query.enforce-tenancy` limits queries on.
    #[arg(long = "query.tenant-label-name", env = "NORN_QUERY_TENANT_LABEL_NAME", default_value = "tenant_id")]
    pub tenant_label_name: String,
    /// Limit queries to the tenant of the request: every selection gets a matcher
    /// `<tenant-label-name>="<tenant>"`, replacing any matcher on that label (as Thanos's
    /// prom-label-proxy enforcer does).
    #[arg(long = "query.enforce-tenancy", env = "NORN_QUERY_ENFORCE_TENANCY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", overrides_with = "no_enforce_tenancy")]
    pub enforce_tenancy: bool,
    /// `--no-query.enforce-tenancy`.
    #[arg(long = "no-query.enforce-tenancy", hide = true, overrides_with = "enforce_tenancy")]
    pub no_enforce_tenancy: bool,
    /// Range queries without `max_source_resolution` may read downsampled data of up to
    /// step / 5 (Thanos's `--query.auto-downsampling`).
    #[arg(long = "query.auto-downsampling", env = "NORN_QUERY_AUTO_DOWNSAMPLING", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", overrides_with = "no_auto_downsampling")]
    pub auto_downsampling: bool,
    /// `--no-query.auto-downsampling`.
    #[arg(long = "no-query.auto-downsampling", hide = true, overrides_with = "auto_downsampling")]
    pub no_auto_downsampling: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            http_address: "127.0.0.1:10902".parse().expect("static address"),
            grpc_address: "127.0.0.1:10901".parse().expect("static address"),
            endpoints: vec![],
            endpoint_sd_files: vec![],
            endpoint_refresh_interval: Duration::from_secs(5),
            endpoint_info_timeout: Duration::from_secs(5),
            dns_server: None,
            replica_labels: vec![],
            partial_response: true,
            no_partial_response: false,
            timeout: Duration::from_secs(120),
            max_concurrent: 20,
            lookback_delta: Duration::from_secs(300),
            max_samples: 50_000_000,
            dedup: true,
            no_dedup: false,
            tenant_header: "THANOS-TENANT".into(),
            default_tenant: "default-tenant".into(),
            tenant_label_name: "tenant_id".into(),
            enforce_tenancy: false,
            no_enforce_tenancy: false,
            auto_downsampling: false,
            no_auto_downsampling: false,
        }
    }
}

impl Args {
    /// Folds the negated boolean flags (`--no-query.dedup`, ...) into their positive ones.
    /// Each pair overrides the other, so whichever came last on the command line is set;
    /// a `--no-` flag given last leaves its positive flag at its default.
    pub fn resolve_negations(mut self) -> Args {
        for (neg, pos) in [
            (&mut self.no_partial_response, &mut self.partial_response),
            (&mut self.no_dedup, &mut self.dedup),
            (&mut self.no_enforce_tenancy, &mut self.enforce_tenancy),
            (&mut self.no_auto_downsampling, &mut self.auto_downsampling),
        ] {
            if std::mem::take(neg) {
                *pos = false;
            }
        }
        self
    }

    /// The flags as `/api/v1/status/flags` lists them (flag name without dashes → value).
    pub fn flag_map(&self) -> Vec<(String, String)> {
        let dur = |d: &Duration| format_duration(*d);
        vec![
            ("endpoint".into(), self.endpoints.join(",")),
            ("endpoint.info-timeout".into(), dur(&self.endpoint_info_timeout)),
            ("endpoint.refresh-interval".into(), dur(&self.endpoint_refresh_interval)),
            ("endpoint.sd-files".into(), join_paths(&self.endpoint_sd_files)),
            ("grpc-address".into(), self.grpc_address.to_string()),
            ("http-address".into(), self.http_address.to_string()),
            ("query.dedup".into(), self.dedup.to_string()),
            ("query.default-tenant-id".into(), self.default_tenant.clone()),
            ("query.auto-downsampling".into(), self.auto_downsampling.to_string()),
            ("query.enforce-tenancy".into(), self.enforce_tenancy.to_string()),
            ("query.lookback-delta".into(), dur(&self.lookback_delta)),
            ("query.max-concurrent".into(), self.max_concurrent.to_string()),
            ("query.max-samples".into(), self.max_samples.to_string()),
            ("query.partial-response".into(), self.partial_response.to_string()),
            ("query.replica-label".into(), self.replica_labels.join(",")),
            ("query.tenant-header".into(), self.tenant_header.clone()),
            ("query.tenant-label-name".into(), self.tenant_label_name.clone()),
            ("query.timeout".into(), dur(&self.timeout)),
        ]
    }
}

fn join_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")
}

/// Parses a Prometheus duration (`1h30m`, `5m`, `250ms`, `2d`, `1w`, `1y`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s).map(|ms| Duration::from_millis(ms as u64))
}

/// Parses a Prometheus duration into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let err = || format!("not a valid duration string: {s:?}");
    if s.is_empty() {
        return Err(err());
    }
    if s == "0" {
        return Ok(0);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err());
        }
        let n: i64 = s[start..i].parse().map_err(|_| err())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult: i64 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(err()),
        };
        total = n.checked_mul(mult).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
    }
    Ok(total)
}

/// Formats a duration as Prometheus prints them (`5m`, `1h30m`, `2m0s`-free form).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("y", 31_536_000_000u64),
        ("w", 604_800_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("query").chain(argv.iter().copied())).map(|c| c.args.resolve_negations())
    }

    #[test]
    fn negated_bool_flags() {
        let d = parse(&[]).unwrap();
        assert!(d.partial_response && d.dedup && !d.enforce_tenancy && !d.auto_downsampling);
        let cases: &[(&[&str], bool)] = &[
            (&["--no-query.partial-response"], false),
            (&["--query.partial-response=false"], false),
            (&["--query.partial-response"], true),
            (&["--no-query.partial-response", "--query.partial-response"], true),
            (&["--query.partial-response=true", "--no-query.partial-response"], false),
        ];
        for (argv, want) in cases {
            assert_eq!(parse(argv).unwrap().partial_response, *want, "{argv:?}");
        }
        let a = parse(&["--no-query.dedup", "--query.enforce-tenancy", "--query.auto-downsampling=true"]).unwrap();
        assert!(!a.dedup && a.enforce_tenancy && a.auto_downsampling);
        let a = parse(&["--query.enforce-tenancy=false", "--no-query.auto-downsampling"]).unwrap();
        assert!(!a.enforce_tenancy && !a.auto_downsampling);
        let a = parse(&["--query.enforce-tenancy", "--no-query.enforce-tenancy"]).unwrap();
        assert!(!a.enforce_tenancy);
        assert!(parse(&["--query.dedup=maybe"]).is_err());
    }

    #[test]
    fn durations() {
        for (s, ms) in [("5m", 300_000), ("1h30m", 5_400_000), ("250ms", 250), ("0", 0), ("2d", 172_800_000)] {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
            if ms > 0 {
                assert_eq!(format_duration(Duration::from_millis(ms as u64)), s);
            }
        }
        for bad in ["", "5", "m", "5x", "1.5h"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }
}
