//! The endpoint set: StoreAPI endpoints from static addresses, DNS names and SD files,
//! resolved again and probed with the Info service every refresh interval.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use norn_model::{Labels, Matcher};
use norn_storeapi::thanos::info::info_client::InfoClient;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse};
use parking_lot::RwLock;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

/// Largest HTTP/2 frame the querier accepts from endpoints (the protocol's default is 16 KiB).
const HTTP2_MAX_FRAME_SIZE: u32 = 1 << 20;

/// One `--endpoint` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSpec {
    /// `host:port`, used as given.
    Static(String),
    /// `dns+host:port`: every A/AAAA address of host.
    Dns { host: String, port: u16 },
    /// `dnssrv+name` (targets resolved to addresses) or `dnssrvnoa+name` (targets used as
    /// host names).
    Srv { name: String, resolve_targets: bool },
}

impl EndpointSpec {
    /// Parses a flag value.
    pub fn parse(s: &str) -> Result<EndpointSpec, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("dnssrvnoa+") {
            return Ok(EndpointSpec::Srv { name: rest.to_string(), resolve_targets: false });
        }
        if let Some(rest) = s.strip_prefix("dnssrv+") {
            return Ok(EndpointSpec::Srv { name: rest.to_string(), resolve_targets: true });
        }
        if let Some(rest) = s.strip_prefix("dns+") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("endpoint {s:?}: missing port"))?;
            let port = port.parse().map_err(|_| format!("endpoint {s:?}: bad port"))?;
            return Ok(EndpointSpec::Dns { host: host.trim_matches(['[', ']']).to_string(), port });
        }
        if s.is_empty() || !s.contains(':') {
            return Err(format!("endpoint {s:?}: expected host:port, dns+host:port or dnssrv+name"));
        }
        Ok(EndpointSpec::Static(s.to_string()))
    }
}

/// What an endpoint told us through Info.
#[derive(Debug, Clone, Default)]
pub struct EndpointInfo {
    /// `ComponentType`, e.g. `receive`.
    pub component: String,
    /// External label sets.
    pub label_sets: Vec<Labels>,
    /// Earliest time (ms) it has data for.
    pub min_time: i64,
    /// Latest time (ms) it has data for.
    pub max_time: i64,
    /// Whether it serves the StoreAPI at all.
    pub has_store: bool,
    /// Whether it serves the Exemplars service.
    pub has_exemplars: bool,
    /// Whether it serves the Metadata service.
    pub has_metadata: bool,
    /// Whether it strips replica labels from series when a request names them.
    pub supports_without_replica_labels: bool,
}

impl EndpointInfo {
    fn from_proto(r: &InfoResponse) -> EndpointInfo {
        let label_sets =
            r.label_sets.iter().filter_map(|ls| norn_storeapi::labels_from_proto(&ls.labels).ok()).collect();
        let (min_time, max_time) = r.store.as_ref().map(|s| (s.min_time, s.max_time)).unwrap_or((i64::MIN, i64::MAX));
        EndpointInfo {
            component: r.component_type.clone(),
            label_sets,
            min_time,
            max_time,
            has_store: r.store.is_some(),
            has_exemplars: r.exemplars.is_some(),
            has_metadata: r.metric_metadata.is_some(),
            supports_without_replica_labels: r.store.as_ref().is_some_and(|s| s.supports_without_replica_labels),
        }
    }

    /// Whether series matching `matchers` in `[mint, maxt]` can come from this endpoint: the
    /// time ranges overlap, and some external label set is compatible with the matchers
    /// (a matcher only rules out a set that has the label and a value failing it).
    pub fn may_match(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> bool {
        if !self.has_store || maxt < self.min_time || mint > self.max_time {
            return false;
        }
        if self.label_sets.is_empty() {
            return true;
        }
        self.label_sets.iter().any(|ls| matchers.iter().all(|m| ls.get(&m.name).is_none_or(|v| m.matches(v))))
    }
}

/// The state of one endpoint address.
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port`.
    pub addr: String,
    /// A lazily connecting channel, shared by all requests.
    pub channel: Channel,
    /// Latest probe result: `Ok(info)` when healthy.
    pub status: RwLock<ProbeStatus>,
}

/// The latest Info probe of an endpoint.
#[derive(Debug, Clone)]
pub struct ProbeStatus {
    /// When it was probed last (None before the first probe).
    pub last_check: Option<SystemTime>,
    /// Info of the last successful probe.
    pub info: Option<EndpointInfo>,
    /// Error of the last probe, if it failed.
    pub last_error: Option<String>,
}

impl EndpointState {
    /// Whether the last probe succeeded.
    pub fn healthy(&self) -> bool {
        let s = self.status.read();
        s.last_error.is_none() && s.info.is_some()
    }
}

/// Options of the endpoint set.
#[derive(Debug, Clone)]
pub struct EndpointSetConfig {
    /// `--endpoint` values.
    pub specs: Vec<EndpointSpec>,
    /// `--endpoint.sd-files`.
    pub sd_files: Vec<PathBuf>,
    /// DNS server to ask; None means the first nameserver in /etc/resolv.conf.
    pub dns_server: Option<SocketAddr>,
    /// Timeout of one Info probe.
    pub info_timeout: Duration,
}

/// All endpoints, refreshed by [`EndpointSet::refresh`].
#[derive(Debug)]
pub struct EndpointSet {
    cfg: EndpointSetConfig,
    resolver: Option<TokioResolver>,
    endpoints: RwLock<BTreeMap<String, Arc<EndpointState>>>,
    /// Last good resolution of each DNS spec, kept when a lookup fails.
    last_resolved: RwLock<HashMap<usize, Vec<String>>>,
}

fn system_nameserver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("nameserver")).then(|| parts.next()?.parse::<IpAddr>().ok()).flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
}

fn build_resolver(server: SocketAddr) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let cfg = ResolverConfig::from_name_servers(vec![ns]);
    let mut b = Resolver::builder_with_config(cfg, TokioRuntimeProvider::default());
    // Endpoint sets change (pods come and go): do not serve stale answers for long.
    b.options_mut().positive_max_ttl = Some(Duration::from_secs(1));
    b.options_mut().negative_max_ttl = Some(Duration::from_secs(1));
    b.build().expect("resolver with one explicit name server builds")
}

impl EndpointSet {
    /// An endpoint set; nothing is resolved or probed until [`EndpointSet::refresh`].
    pub fn new(cfg: EndpointSetConfig) -> EndpointSet {
        let needs_dns = cfg.specs.iter().any(|s| !matches!(s, EndpointSpec::Static(_))) || !cfg.sd_files.is_empty();
        let resolver = if needs_dns { cfg.dns_server.or_else(system_nameserver).map(build_resolver) } else { None };
        EndpointSet {
            cfg,
            resolver,
            endpoints: RwLock::new(BTreeMap::new()),
            last_resolved: RwLock::new(HashMap::new()),
        }
    }

    async fn resolve_spec(&self, spec: &EndpointSpec) -> Result<Vec<String>, String> {
        let resolver = || self.resolver.as_ref().ok_or_else(|| "no DNS server configured".to_string());
        match spec {
            EndpointSpec::Static(a) => Ok(vec![a.clone()]),
            EndpointSpec::Dns { host, port } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(vec![SocketAddr::new(ip, *port).to_string()]);
                }
                let ips = resolver()?.lookup_ip(fqdn(host)).await.map_err(|e| format!("lookup {host}: {e}"))?;
                Ok(ips.iter().map(|ip| SocketAddr::new(ip, *port).to_string()).collect())
            }
            EndpointSpec::Srv { name, resolve_targets } => {
                let r = resolver()?;
                let srv = r.srv_lookup(fqdn(name)).await.map_err(|e| format!("SRV lookup {name}: {e}"))?;
                let mut out = Vec::new();
                for rec in srv.answers() {
                    let RData::SRV(s) = &rec.data else { continue };
                    let target = s.target.to_utf8();
                    let target = target.trim_end_matches('.').to_string();
                    if *resolve_targets {
                        let ips = r.lookup_ip(fqdn(&target)).await.map_err(|e| format!("lookup {target}: {e}"))?;
                        out.extend(ips.iter().map(|ip| SocketAddr::new(ip, s.port).to_string()));
                    } else {
                        out.push(format!("{target}:{}", s.port));
                    }
                }
                Ok(out)
            }
        }
    }

    async fn resolve_all(&self) -> Vec<String> {
        let mut specs = self.cfg.specs.clone();
        for f in &self.cfg.sd_files {
            match read_sd_file(f) {
                Ok(list) => specs.extend(list.iter().filter_map(|s| EndpointSpec::parse(s).ok())),
                Err(e) => tracing::warn!(file = %f.display(), error = %e, "reading endpoint SD file"),
            }
        }
        let mut addrs = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match self.resolve_spec(spec).await {
                Ok(a) => {
                    self.last_resolved.write().insert(i, a.clone());
                    addrs.extend(a);
                }
                Err(e) => {
                    tracing::warn!(endpoint = ?spec, error = %e, "resolving endpoint; keeping last known addresses");
                    if let Some(a) = self.last_resolved.read().get(&i) {
                        addrs.extend(a.iter().cloned());
                    }
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Resolves all names again, adds and removes endpoints accordingly, and probes each
    /// with Info (in parallel).
    pub async fn refresh(&self) {
        let addrs = self.resolve_all().await;
        {
            let mut eps = self.endpoints.write();
            eps.retain(|a, _| addrs.contains(a));
            for a in &addrs {
                if eps.contains_key(a) {
                    continue;
                }
                let channel = match TonicEndpoint::from_shared(format!("http://{a}")) {
                    // Series answers come in frames of about a megabyte: HTTP/2 frames that
                    // size instead of 16 KiB mean 64 times fewer frames to read, wake up
                    // for and copy on both sides (RF=3 reads three such streams).
                    Ok(e) => e
                        .connect_timeout(self.cfg.info_timeout)
                        .tcp_nodelay(true)
                        .max_frame_size(HTTP2_MAX_FRAME_SIZE)
                        .connect_lazy(),
                    Err(e) => {
                        tracing::warn!(endpoint = %a, error = %e, "invalid endpoint address");
                        continue;
                    }
                };
                let status = ProbeStatus { last_check: None, info: None, last_error: Some("not probed yet".into()) };
                eps.insert(
                    a.clone(),
                    Arc::new(EndpointState { addr: a.clone(), channel, status: RwLock::new(status) }),
                );
            }
        }
        let all: Vec<Arc<EndpointState>> = self.endpoints.read().values().cloned().collect();
        let timeout = self.cfg.info_timeout;
        let probes = all.into_iter().map(|ep| async move {
            let mut client = InfoClient::new(ep.channel.clone());
            let res = tokio::time::timeout(timeout, client.info(InfoRequest {})).await;
            let mut st = ep.status.write();
            st.last_check = Some(SystemTime::now());
            match res {
                Ok(Ok(r)) => {
                    st.info = Some(EndpointInfo::from_proto(r.get_ref()));
                    st.last_error = None;
                }
                Ok(Err(e)) => st.last_error = Some(format!("{}: {}", ep.addr, e.message())),
                Err(_) => st.last_error = Some(format!("{}: info probe timed out", ep.addr)),
            }
        });
        futures::future::join_all(probes).await;
    }

    /// Every endpoint currently in the set.
    pub fn all(&self) -> Vec<Arc<EndpointState>> {
        self.endpoints.read().values().cloned().collect()
    }

    /// Endpoints to ask for a selection, and the errors of endpoints that are down but
    /// might have held matching data.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> (Vec<Arc<EndpointState>>, Vec<String>) {
        let mut use_ = Vec::new();
        let mut down = Vec::new();
        for ep in self.endpoints.read().values() {
            let st = ep.status.read();
            match (&st.info, &st.last_error) {
                (Some(info), None) => {
                    if info.may_match(matchers, mint, maxt) {
                        use_.push(ep.clone());
                    }
                }
                (info, Some(err)) => {
                    // A down endpoint is only reported when its last known info does not
                    // already rule it out.
                    if info.as_ref().is_none_or(|i| i.may_match(matchers, mint, maxt)) {
                        down.push(err.clone());
                    }
                }
                (None, None) => {}
            }
        }
        (use_, down)
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

/// Reads a Prometheus file-SD style JSON file (`[{"targets": ["host:port", ...]}]`).
fn read_sd_file(p: &std::path::Path) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Group {
        targets: Vec<String>,
    }
    let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
    let groups: Vec<Group> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(groups.into_iter().flat_map(|g| g.targets).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::MatchType;

    #[test]
    fn parse_specs() {
        let cases = [
            ("localhost:10901", Ok(EndpointSpec::Static("localhost:10901".into()))),
            ("dns+store.svc:10901", Ok(EndpointSpec::Dns { host: "store.svc".into(), port: 10901 })),
            (
                "dnssrv+_grpc._tcp.recv.ns.svc",
                Ok(EndpointSpec::Srv { name: "_grpc._tcp.recv.ns.svc".into(), resolve_targets: true }),
            ),
            ("dnssrvnoa+_grpc._tcp.x", Ok(EndpointSpec::Srv { name: "_grpc._tcp.x".into(), resolve_targets: false })),
        ];
        for (s, want) in cases {
            assert_eq!(EndpointSpec::parse(s), want, "{s}");
        }
        assert!(EndpointSpec::parse("nohost").is_err());
        assert!(EndpointSpec::parse("dns+x:y").is_err());
    }

    #[test]
    fn info_prunes_by_time_and_external_labels() {
        let info = EndpointInfo {
            component: "receive".into(),
            label_sets: vec![Labels::from_pairs([("replica", "0"), ("tenant_id", "a")])],
            min_time: 1000,
            max_time: 2000,
            has_store: true,
            ..Default::default()
        };
        let m = |k, n: &str, v: &str| Matcher::new(k, n, v).unwrap();
        let cases = [
            (vec![m(MatchType::Equal, "__name__", "up")], 0, 5000, true),
            (vec![m(MatchType::Equal, "__name__", "up")], 2001, 5000, false),
            (vec![m(MatchType::Equal, "__name__", "up")], 0, 999, false),
            (vec![m(MatchType::Equal, "tenant_id", "b")], 0, 5000, false),
            (vec![m(MatchType::Regex, "tenant_id", "a|b")], 0, 5000, true),
            (vec![m(MatchType::NotEqual, "replica", "0")], 0, 5000, false),
        ];
        for (ms, mint, maxt, want) in cases {
            assert_eq!(info.may_match(&ms, mint, maxt), want, "{ms:?} {mint} {maxt}");
        }
    }
}
