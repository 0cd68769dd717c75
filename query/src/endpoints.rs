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

/// Largest HTTP/2 frame the querier accepts from endpoints: the protocol's largest. Series
/// messages (about 1 MB at 1,024 series, often more) then come in one DATA frame each and are
/// read without a copy (`seriesview::GrpcMessages`); a message cut over frames is copied once.
const HTTP2_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;

/// HTTP/2 flow-control windows towards endpoints, per stream and per connection: a sender out
/// of window also cuts its DATA frame (hyper's defaults are 2 and 5 MiB). The querier keeps
/// every Series answer in memory until the merge anyway, so larger windows add no memory it
/// would not hold; a streamed remote read, which does not, holds up to the stream window per
/// endpoint in flight. The connection window is the protocol's largest, so the memory bound
/// is the stream window per open stream: streams a streamed read holds back (its merge
/// waiting on another endpoint) must not use up the window that the PromQL selects and Info
/// probes on the same connection need.
const HTTP2_STREAM_WINDOW: u32 = 16 << 20;
const HTTP2_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// One `--endpoint` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSpec {
    /// `host:port`, used as given.
    Static(String),
    /// `dns+host:port`: every A/AAAA address of host.
    Dns { host: String, port: u16 },
    /// `dnssrv+name` (targets resolved to addresses) or `dnssrvnoa+name` (targets used as
    /// host names); `dnssrv+name:port` uses that port instead of the records' ports, as
    /// Thanos does.
    Srv { name: String, port: Option<u16>, resolve_targets: bool },
}

impl EndpointSpec {
    /// Parses a flag value.
    pub fn parse(s: &str) -> Result<EndpointSpec, String> {
        let s = s.trim();
        let srv = |rest: &str, resolve_targets: bool| {
            // An optional `:port` overrides the SRV records' ports (Thanos splits host and
            // port the same way and keeps the records' ports only when none is given).
            let (name, port) = match rest.rsplit_once(':') {
                Some((name, port)) => {
                    (name, Some(port.parse::<u16>().map_err(|_| format!("endpoint {s:?}: bad port {port:?}"))?))
                }
                None => (rest, None),
            };
            if name.is_empty() {
                return Err(format!("endpoint {s:?}: missing SRV name"));
            }
            Ok(EndpointSpec::Srv { name: name.to_string(), port, resolve_targets })
        };
        if let Some(rest) = s.strip_prefix("dnssrvnoa+") {
            return srv(rest, false);
        }
        if let Some(rest) = s.strip_prefix("dnssrv+") {
            return srv(rest, true);
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
    /// `--endpoint.sd-files`: file names, the last path component possibly a pattern
    /// (see [`check_sd_file_name`]).
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
    /// The resolver and search list in use, rebuilt when resolv.conf changes.
    dns: RwLock<DnsConf>,
    /// resolv.conf, read again at every refresh (as Go's resolver, which Thanos uses,
    /// checks it every few seconds): a changed search list or name server applies
    /// without a restart.
    resolv_conf: PathBuf,
    endpoints: RwLock<BTreeMap<String, Arc<EndpointState>>>,
    /// Last good resolution of each DNS spec (by its `Debug` form, as SD files add and
    /// remove specs), kept when a lookup fails.
    last_resolved: RwLock<HashMap<String, Vec<String>>>,
    /// Per SD file currently matched by a pattern, the targets of its last good read
    /// (kept while it cannot be read or parsed, as Prometheus's file SD keeps a file's
    /// last groups) and the error of its latest read, if that failed. A file no pattern
    /// matches any more leaves the map, and its targets the set.
    sd_state: RwLock<BTreeMap<PathBuf, SdFileState>>,
}

/// What the latest reads of one SD file gave.
#[derive(Debug, Clone, Default)]
struct SdFileState {
    targets: Vec<String>,
    error: Option<String>,
}

/// The resolver of a refresh and the resolv.conf text it was made from.
#[derive(Debug, Default)]
struct DnsConf {
    /// resolv.conf's text when last read (`None` before the first read or while it cannot
    /// be read).
    text: Option<String>,
    /// The name server asked and its resolver; `None` when there is none.
    resolver: Option<(SocketAddr, TokioResolver)>,
    /// Search domains and `ndots`, applied to `dns+`/`dnssrv+` names.
    search: SearchList,
}

/// The first `nameserver` of resolv.conf text, on port 53.
fn nameserver_of(conf: &str) -> Option<SocketAddr> {
    conf.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("nameserver")).then(|| parts.next()?.parse::<IpAddr>().ok()).flatten()
        })
        .map(|ip| SocketAddr::new(ip, 53))
}

/// The name-search part of resolv.conf: `search` (or `domain`) and `options ndots:N`.
/// Thanos's resolvers (its miekg/dns one, and Go's) try a name not ending in `.` with these
/// suffixes, so short service names (`recv.ns`) resolve inside a Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchList {
    /// Suffixes tried, in order, without the trailing dot.
    pub domains: Vec<String>,
    /// A name with more labels than this is tried as it is before the suffixes.
    pub ndots: usize,
}

impl Default for SearchList {
    fn default() -> Self {
        SearchList { domains: vec![], ndots: 1 }
    }
}

impl SearchList {
    /// Reads resolv.conf text: the last `search` or `domain` line wins (as the resolver
    /// library does); `ndots` is capped at 15.
    pub fn parse(conf: &str) -> SearchList {
        let mut out = SearchList::default();
        for line in conf.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("search" | "domain") => {
                    out.domains = f.map(|d| d.trim_end_matches('.').to_string()).filter(|d| !d.is_empty()).collect();
                }
                Some("options") => {
                    for o in f {
                        if let Some(n) = o.strip_prefix("ndots:").and_then(|n| n.parse::<usize>().ok()) {
                            out.ndots = n.min(15);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The absolute names to try for `name`, in order (miekg/dns's `NameList`): an absolute
    /// name as it is; else with more than `ndots` labels the name itself first, then each
    /// suffix; with fewer, the suffixes first and the name itself last.
    pub fn names(&self, name: &str) -> Vec<String> {
        if name.ends_with('.') {
            return vec![name.to_string()];
        }
        let labels = name.split('.').filter(|l| !l.is_empty()).count();
        let own = format!("{name}.");
        let suffixed = self.domains.iter().map(|d| format!("{name}.{d}."));
        if labels > self.ndots {
            std::iter::once(own).chain(suffixed).collect()
        } else {
            suffixed.chain(std::iter::once(own)).collect()
        }
    }
}

/// What one name's lookups gave: records, "no such name" for every candidate (Thanos then
/// answers no addresses, not an error), or an error.
enum Found<T> {
    Records(T),
    NotFound,
}

/// Tries `lookup` on the search-list candidates of `name` as miekg/dns's
/// `lookupWithSearchPath` does: the first name the DNS knows (records, or no records of
/// that type) ends the search; NXDOMAIN moves on; other errors move on too but, when no
/// name is known, make the whole lookup fail (the last addresses are then kept).
async fn lookup_with_search<T, F, Fut>(search: &SearchList, name: &str, lookup: F) -> Result<Found<T>, String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, hickory_resolver::net::NetError>>,
{
    let mut errors = Vec::new();
    for candidate in search.names(name) {
        match lookup(candidate.clone()).await {
            Ok(r) => return Ok(Found::Records(r)),
            Err(e) if e.is_nx_domain() => {}
            Err(e) if e.is_no_records_found() => return Ok(Found::NotFound),
            Err(e) => errors.push(format!("{candidate}: {e}")),
        }
    }
    if errors.is_empty() { Ok(Found::NotFound) } else { Err(errors.join("; ")) }
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
    /// An endpoint set; nothing is resolved or probed (and resolv.conf not read) until
    /// [`EndpointSet::refresh`].
    pub fn new(cfg: EndpointSetConfig) -> EndpointSet {
        Self::with_resolv_conf(cfg, PathBuf::from("/etc/resolv.conf"))
    }

    /// An endpoint set that reads `resolv_conf` instead of /etc/resolv.conf.
    pub fn with_resolv_conf(cfg: EndpointSetConfig, resolv_conf: PathBuf) -> EndpointSet {
        EndpointSet {
            cfg,
            dns: RwLock::new(DnsConf::default()),
            resolv_conf,
            endpoints: RwLock::new(BTreeMap::new()),
            last_resolved: RwLock::new(HashMap::new()),
            sd_state: RwLock::new(BTreeMap::new()),
        }
    }

    /// Reads resolv.conf again; when its text changed, takes its search list and, unless
    /// a DNS server was configured, rebuilds the resolver for its first name server. An
    /// unreadable file keeps what was read last (a resolver once built stays).
    fn reread_resolv_conf(&self) -> (Option<TokioResolver>, SearchList) {
        // A text with no name server and no search list is taken for one caught while being
        // rewritten (or emptied): what was read last stays.
        let text = std::fs::read_to_string(&self.resolv_conf).ok().filter(|t| {
            t.lines().any(|l| matches!(l.split_whitespace().next(), Some("nameserver" | "search" | "domain")))
        });
        let mut d = self.dns.write();
        if (text.is_some() && text != d.text) || d.resolver.is_none() {
            let conf = text.as_deref().unwrap_or_default();
            if text.is_some() {
                d.search = SearchList::parse(conf);
            }
            let server = self.cfg.dns_server.or_else(|| nameserver_of(conf));
            if let Some(server) = server
                && d.resolver.as_ref().is_none_or(|(s, _)| *s != server)
            {
                if d.resolver.is_some() {
                    tracing::info!(%server, "resolv.conf changed: DNS lookups now ask this server");
                }
                d.resolver = Some((server, build_resolver(server)));
            }
            if text.is_some() {
                d.text = text;
            }
        }
        (d.resolver.as_ref().map(|(_, r)| r.clone()), d.search.clone())
    }

    async fn resolve_spec(
        &self,
        spec: &EndpointSpec,
        resolver: Option<&TokioResolver>,
        search: &SearchList,
    ) -> Result<Vec<String>, String> {
        let resolver = || resolver.ok_or_else(|| "no DNS server configured".to_string());
        match spec {
            EndpointSpec::Static(a) => Ok(vec![a.clone()]),
            EndpointSpec::Dns { host, port } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(vec![SocketAddr::new(ip, *port).to_string()]);
                }
                let r = resolver()?;
                match lookup_with_search(search, host, |n| r.lookup_ip(n)).await {
                    Ok(Found::Records(ips)) => {
                        Ok(ips.iter().map(|ip| SocketAddr::new(ip, *port).to_string()).collect())
                    }
                    Ok(Found::NotFound) => {
                        tracing::warn!(host, "no addresses found for endpoint host");
                        Ok(vec![])
                    }
                    Err(e) => Err(format!("lookup IP addresses {host:?}: {e}")),
                }
            }
            EndpointSpec::Srv { name, port, resolve_targets } => {
                let r = resolver()?;
                let srv = match lookup_with_search(search, name, |n| r.srv_lookup(n)).await {
                    Ok(Found::Records(srv)) => srv,
                    Ok(Found::NotFound) => {
                        tracing::warn!(name, "no SRV records found for endpoint");
                        return Ok(vec![]);
                    }
                    Err(e) => return Err(format!("lookup SRV records {name:?}: {e}")),
                };
                let mut out = Vec::new();
                for rec in srv.answers() {
                    let RData::SRV(s) = &rec.data else { continue };
                    let port = port.unwrap_or(s.port);
                    let target = s.target.to_utf8();
                    if *resolve_targets {
                        // The target is absolute (a DNS name from a record): no search list.
                        match lookup_with_search(&SearchList::default(), &target, |n| r.lookup_ip(n)).await {
                            Ok(Found::Records(ips)) => {
                                out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port).to_string()))
                            }
                            Ok(Found::NotFound) => tracing::warn!(srv = name, target, "SRV target has no addresses"),
                            Err(e) => return Err(format!("lookup IP addresses {target:?} (SRV {name:?}): {e}")),
                        }
                    } else {
                        out.push(format!("{}:{port}", target.trim_end_matches('.')));
                    }
                }
                Ok(out)
            }
        }
    }

    async fn resolve_all(&self) -> Vec<String> {
        let mut specs = self.cfg.specs.clone();
        specs.extend(self.read_sd_files());
        let (resolver, search) = if specs.iter().all(|s| matches!(s, EndpointSpec::Static(_))) {
            (None, SearchList::default())
        } else {
            self.reread_resolv_conf()
        };
        // All at once: a name whose server does not answer costs one lookup's timeout, not
        // one per name after it.
        let resolved =
            futures::future::join_all(specs.iter().map(|spec| self.resolve_spec(spec, resolver.as_ref(), &search)))
                .await;
        let mut addrs = Vec::new();
        for (spec, r) in specs.iter().zip(resolved) {
            let key = format!("{spec:?}");
            match r {
                Ok(a) => {
                    self.last_resolved.write().insert(key, a.clone());
                    addrs.extend(a);
                }
                Err(e) => {
                    tracing::warn!(endpoint = ?spec, error = %e, "resolving endpoint; keeping last known addresses");
                    if let Some(a) = self.last_resolved.read().get(&key) {
                        addrs.extend(a.iter().cloned());
                    }
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The endpoint specs of the SD files: the patterns listed again, every file they
    /// match read again (one that cannot be read or parsed keeps its last good targets;
    /// the error is logged once per change and kept for [`EndpointSet::sd_file_errors`]),
    /// files no longer matched dropped with their targets, as Prometheus's file SD does.
    /// When a pattern's directory cannot be listed, the files it matched before are kept.
    /// Targets that are no endpoint spec are skipped and logged.
    fn read_sd_files(&self) -> Vec<EndpointSpec> {
        let mut listed: std::collections::BTreeSet<PathBuf> = Default::default();
        let mut unlisted: Vec<SdPattern> = Vec::new();
        for p in &self.cfg.sd_files {
            let pattern = match SdPattern::parse(p) {
                Ok(pattern) => pattern,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping endpoint SD file pattern");
                    continue;
                }
            };
            match pattern.list() {
                Ok(files) => listed.extend(files),
                Err(e) => {
                    tracing::warn!(error = %e, "listing endpoint SD files; keeping the files matched before");
                    unlisted.push(pattern);
                }
            }
        }
        self.sd_state.write().retain(|f, st| {
            let keep = listed.contains(f) || unlisted.iter().any(|p| p.matches(f));
            if !keep {
                tracing::info!(file = %f.display(), dropped = st.targets.len(),
                    "endpoint SD file no longer there; its targets are dropped");
            }
            keep
        });
        for f in &listed {
            self.reread_sd(f);
        }
        let states = self.sd_state.read();
        let mut specs = Vec::new();
        for (f, st) in states.iter() {
            for t in &st.targets {
                match EndpointSpec::parse(t) {
                    Ok(s) => specs.push(s),
                    Err(e) => tracing::warn!(file = %f.display(), error = %e, "skipping endpoint SD target"),
                }
            }
        }
        specs
    }

    /// Reads SD file `f` again into its state.
    fn reread_sd(&self, f: &std::path::Path) {
        let mut states = self.sd_state.write();
        let st = states.entry(f.to_path_buf()).or_default();
        match read_sd_file(f) {
            Ok(targets) => {
                if st.error.take().is_some() || st.targets != targets {
                    tracing::info!(file = %f.display(), targets = targets.len(), "endpoint SD file read");
                }
                st.targets = targets;
            }
            Err(e) => {
                if st.error.as_ref() != Some(&e) {
                    tracing::warn!(file = %f.display(), error = %e, kept = st.targets.len(),
                        "reading endpoint SD file; keeping its last good targets");
                }
                st.error = Some(e);
            }
        }
    }

    /// SD files whose latest read failed, with the error (which names the file). Their
    /// last good targets are still in use.
    pub fn sd_file_errors(&self) -> Vec<(PathBuf, String)> {
        self.sd_state.read().iter().filter_map(|(p, s)| Some((p.clone(), s.error.clone()?))).collect()
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
                    // large (the protocol's default is 16 KiB) mean fewer frames to read and wake
                    // up for; 1.3–1.8 % lower latency over three receivers at 1 MiB (paired A/B
                    // of the bench-query set, docs/benchmarks.md, session 5); at the largest
                    // size a message is also one frame, read without a copy.
                    Ok(e) => e
                        .connect_timeout(self.cfg.info_timeout)
                        .tcp_nodelay(true)
                        .max_frame_size(HTTP2_MAX_FRAME_SIZE)
                        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
                        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
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

/// Checks an `--endpoint.sd-files` value as Prometheus checks its file SD `files`: the
/// name must say the format (`.json`, `.yml` or `.yaml`, all lower or all upper case),
/// and only the last path component may be a pattern (`*`, `?`, `[...]` as Go's
/// `filepath.Match`; stricter than Prometheus, which lets `?` and `[` through in
/// directories).
pub fn check_sd_file_name(p: &std::path::Path) -> Result<(), String> {
    check_sd_file_ext(p)?;
    SdPattern::parse(p).map(|_| ())
}

/// The extension rule of Prometheus's file SD (`json|yml|yaml|JSON|YML|YAML`). A file a
/// pattern matched is checked with this alone: its name is a name, not a pattern.
fn check_sd_file_ext(p: &std::path::Path) -> Result<(), String> {
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "json" | "yml" | "yaml" | "JSON" | "YML" | "YAML") {
        return Err(format!(
            "endpoint SD file {}: unsupported file extension (want .json, .yml or .yaml)",
            p.display()
        ));
    }
    Ok(())
}

/// One element of a file name pattern.
#[derive(Debug, Clone, PartialEq)]
enum PatternToken {
    /// This character.
    Literal(char),
    /// `?`: any one character.
    AnyChar,
    /// `*`: any run of characters.
    AnyRun,
    /// `[...]` / `[^...]`: one character in (or, negated, outside) the ranges.
    Class { negated: bool, ranges: Vec<(char, char)> },
}

/// An `--endpoint.sd-files` value: a directory and a file name that may be a pattern.
#[derive(Debug, Clone)]
struct SdPattern {
    path: PathBuf,
    dir: PathBuf,
    /// The file name's tokens; None for a plain name (no pattern characters).
    tokens: Option<Vec<PatternToken>>,
}

/// Characters that make a name a pattern, as Go's `filepath.Glob` decides.
const PATTERN_CHARS: &[char] = &['*', '?', '[', '\\'];

impl SdPattern {
    fn parse(p: &std::path::Path) -> Result<SdPattern, String> {
        let err = |what: &str| format!("endpoint SD file pattern {}: {what}", p.display());
        let name = p.file_name().ok_or_else(|| err("no file name"))?;
        let name = name.to_str().ok_or_else(|| err("file name is not UTF-8"))?;
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.to_string_lossy().contains(PATTERN_CHARS) {
            return Err(err("only the file name may be a pattern, not a directory"));
        }
        let tokens = if name.contains(PATTERN_CHARS) { Some(parse_pattern(name).map_err(|e| err(&e))?) } else { None };
        Ok(SdPattern { path: p.to_path_buf(), dir, tokens })
    }

    /// Files the pattern matches now, sorted: a plain name when it exists (as Go's
    /// `Glob`), else the regular files of the directory whose names match; none when the
    /// directory does not exist. An error names the directory.
    fn list(&self) -> Result<Vec<PathBuf>, String> {
        let Some(tokens) = &self.tokens else {
            return Ok(std::fs::symlink_metadata(&self.path).is_ok().then(|| self.path.clone()).into_iter().collect());
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(format!("listing {} for {}: {e}", self.dir.display(), self.path.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| format!("listing {} for {}: {e}", self.dir.display(), self.path.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let path = entry.path();
            if pattern_matches(tokens, &name) && !path.is_dir() {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether file `f` is one this pattern can match.
    fn matches(&self, f: &std::path::Path) -> bool {
        match &self.tokens {
            None => f == self.path,
            Some(t) => {
                f.parent() == Some(self.dir.as_path())
                    && f.file_name().and_then(|n| n.to_str()).is_some_and(|n| pattern_matches(t, n))
            }
        }
    }
}

/// Parses a file name pattern with Go's `filepath.Match` syntax: `*`, `?`, `[...]` with
/// `^` negation and `a-z` ranges, `\` escaping the next character.
fn parse_pattern(p: &str) -> Result<Vec<PatternToken>, String> {
    let mut out = Vec::new();
    let mut it = p.chars().peekable();
    let escaped = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<char, String> {
        it.next().ok_or_else(|| "pattern ends in an escape (\\)".to_string())
    };
    while let Some(c) = it.next() {
        match c {
            '*' => out.push(PatternToken::AnyRun),
            '?' => out.push(PatternToken::AnyChar),
            '\\' => out.push(PatternToken::Literal(escaped(&mut it)?)),
            '[' => {
                let negated = it.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                // One end of a range: an escaped character, or any but `-` and `]`.
                let end = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<char, String> {
                    match it.next() {
                        Some('\\') => escaped(it),
                        Some('-' | ']') | None => Err("malformed character class".to_string()),
                        Some(c) => Ok(c),
                    }
                };
                loop {
                    if !ranges.is_empty() && it.next_if_eq(&']').is_some() {
                        break;
                    }
                    let lo = end(&mut it)?;
                    let hi = if it.next_if_eq(&'-').is_some() { end(&mut it)? } else { lo };
                    // As Go: a range whose ends are reversed is valid and matches nothing.
                    ranges.push((lo, hi));
                }
                out.push(PatternToken::Class { negated, ranges });
            }
            c => out.push(PatternToken::Literal(c)),
        }
    }
    Ok(out)
}

/// Whether `name` matches the whole pattern (greedy `*` with backtracking to the last
/// `*`, enough as every other token takes exactly one character).
fn pattern_matches(tokens: &[PatternToken], name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    let one = |t: &PatternToken, c: char| match t {
        PatternToken::Literal(l) => *l == c,
        PatternToken::AnyChar => true,
        PatternToken::AnyRun => false,
        PatternToken::Class { negated, ranges } => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated,
    };
    let (mut t, mut c) = (0, 0);
    // Where the last `*` was and the character it was last tried to end before.
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        if t < tokens.len() && tokens[t] == PatternToken::AnyRun {
            star = Some((t, c));
            t += 1;
        } else if t < tokens.len() && one(&tokens[t], chars[c]) {
            t += 1;
            c += 1;
        } else if let Some((st, sc)) = star {
            t = st + 1;
            c = sc + 1;
            star = Some((st, sc + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|x| *x == PatternToken::AnyRun)
}

/// Reads a Prometheus file-SD file, a list of target groups (`targets`, and `labels`,
/// which endpoints have no use for and which are not checked), in the format its extension names as Prometheus's
/// file SD decides: `.json`, or `.yml` / `.yaml` (case-insensitive; YAML strictly, with
/// unknown keys refused, as Prometheus). An empty YAML file is an empty list. Errors
/// name the file.
fn read_sd_file(p: &std::path::Path) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct JsonGroup {
        #[serde(default)]
        targets: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct YamlGroup {
        #[serde(default)]
        targets: Vec<String>,
        /// Not used by endpoints; accepted whatever its shape.
        #[serde(default)]
        #[allow(dead_code)]
        labels: Option<serde::de::IgnoredAny>,
    }
    check_sd_file_ext(p)?;
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let err = |e: &dyn std::fmt::Display| format!("endpoint SD file {}: {e}", p.display());
    let text = std::fs::read_to_string(p).map_err(|e| err(&e))?;
    if ext == "json" {
        let groups: Vec<JsonGroup> = serde_json::from_str(&text).map_err(|e| err(&e))?;
        return Ok(groups.into_iter().flat_map(|g| g.targets).collect());
    }
    let groups: Option<Vec<YamlGroup>> = serde_saphyr::from_str(&text).map_err(|e| err(&e))?;
    Ok(groups.unwrap_or_default().into_iter().flat_map(|g| g.targets).collect())
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
                Ok(EndpointSpec::Srv { name: "_grpc._tcp.recv.ns.svc".into(), port: None, resolve_targets: true }),
            ),
            (
                "dnssrvnoa+_grpc._tcp.x",
                Ok(EndpointSpec::Srv { name: "_grpc._tcp.x".into(), port: None, resolve_targets: false }),
            ),
            (
                "dnssrv+_grpc._tcp.x:10905",
                Ok(EndpointSpec::Srv { name: "_grpc._tcp.x".into(), port: Some(10905), resolve_targets: true }),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(EndpointSpec::parse(s), want, "{s}");
        }
        assert!(EndpointSpec::parse("nohost").is_err());
        for bad in ["dns+x:y", "dns+x", "dnssrv+_grpc._tcp.x:http", "dnssrv+:1", "dnssrvnoa+"] {
            assert!(EndpointSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolv_conf_search_list() {
        let conf = "nameserver 10.0.0.10\nsearch ns.svc.cluster.local svc.cluster.local. cluster.local\noptions ndots:5 edns0\n";
        let sl = SearchList::parse(conf);
        assert_eq!(sl.domains, vec!["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        assert_eq!(sl.ndots, 5);
        // Few labels: the suffixes first, the name itself last.
        assert_eq!(
            sl.names("_grpc._tcp.recv"),
            vec![
                "_grpc._tcp.recv.ns.svc.cluster.local.",
                "_grpc._tcp.recv.svc.cluster.local.",
                "_grpc._tcp.recv.cluster.local.",
                "_grpc._tcp.recv."
            ]
        );
        assert_eq!(sl.names("a.b."), vec!["a.b."]);
        let sl = SearchList::parse("domain example.org\n");
        assert_eq!(sl.ndots, 1);
        // More labels than ndots: the name itself first.
        assert_eq!(sl.names("store.ns"), vec!["store.ns.", "store.ns.example.org."]);
        assert_eq!(sl.names("store"), vec!["store.example.org.", "store."]);
        assert_eq!(SearchList::parse("search a\nsearch b c\noptions ndots:99").domains, vec!["b", "c"]);
        assert_eq!(SearchList::parse("options ndots:99").ndots, 15);
        assert_eq!(SearchList::default().names("x"), vec!["x."]);
    }

    #[test]
    fn sd_file_formats() {
        let dir = tempfile::tempdir().unwrap();
        // File name, contents, and the targets or a part of the error.
        type Case<'a> = (&'a str, &'a str, Result<&'a [&'a str], &'a str>);
        let cases: &[Case<'_>] = &[
            (
                "a.json",
                r#"[{"targets": ["h1:1", "h2:2"], "labels": {"x": "y"}}, {"targets": ["h3:3"]}]"#,
                Ok(&["h1:1", "h2:2", "h3:3"]),
            ),
            (
                "b.yml",
                "- targets: ['h1:1', 'h2:2']\n  labels:\n    x: y\n- targets:\n  - dns+h3:3\n",
                Ok(&["h1:1", "h2:2", "dns+h3:3"]),
            ),
            ("c.YAML", "# nothing yet\n", Ok(&[])),
            ("d.yaml", "[]", Ok(&[])),
            ("e.yaml", "- targets: [h1:1]\n  tragets: [h2:2]\n", Err("tragets")),
            ("f.yaml", "- targets: [h1:1\n", Err("f.yaml")),
            ("g.yml", "- targets: [h1:1]\n  labels: {port: 80}\n", Ok(&["h1:1"])),
            ("h.json", "- targets: [h1:1]\n", Err("h.json")),
            ("i.txt", "[]", Err("unsupported file extension")),
        ];
        for (name, text, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let got = read_sd_file(&p);
            match want {
                Ok(w) => {
                    assert_eq!(got.as_deref(), Ok(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]), "{name}")
                }
                Err(w) => {
                    let e = got.expect_err(name);
                    assert!(e.contains(&p.display().to_string()) && e.contains(w), "{name}: {e}");
                }
            }
        }
        let e = read_sd_file(&dir.path().join("missing.yml")).unwrap_err();
        assert!(e.contains("missing.yml"), "{e}");
    }

    /// A YAML SD file is picked up, re-read on change, and when broken reported with its
    /// name while its last good targets stay in the set.
    #[tokio::test]
    async fn yaml_sd_file_reread_and_kept_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("stores.yaml");
        std::fs::write(&f, "- targets:\n  - 127.0.0.1:1\n  - 127.0.0.1:2\n").unwrap();
        let set = EndpointSet::new(EndpointSetConfig {
            specs: vec![EndpointSpec::Static("127.0.0.1:3".into())],
            sd_files: vec![f.clone()],
            dns_server: Some("127.0.0.1:1".parse().unwrap()),
            info_timeout: Duration::from_millis(200),
        });
        let addrs = |set: &EndpointSet| set.all().iter().map(|e| e.addr.clone()).collect::<Vec<_>>();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert!(set.sd_file_errors().is_empty());
        std::fs::write(&f, "- targets: ['127.0.0.1:4']\n  labels: {zone: a}\n").unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3", "127.0.0.1:4"]);
        std::fs::write(&f, "- targets: ['127.0.0.1:5'\n").unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3", "127.0.0.1:4"]);
        let errs = set.sd_file_errors();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, f);
        assert!(errs[0].1.contains("stores.yaml"), "{}", errs[0].1);
        std::fs::write(&f, "[]").unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3"]);
        assert!(set.sd_file_errors().is_empty());
        // Removed: its targets go, as in Prometheus's file SD (a file replaced by a
        // rename is never missing).
        std::fs::write(&f, "- targets: ['127.0.0.1:4']\n").unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3", "127.0.0.1:4"]);
        std::fs::remove_file(&f).unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3"]);
    }

    /// File name patterns as Go's `filepath.Match`: what they match, and what is refused.
    #[test]
    fn sd_file_patterns() {
        // Pattern, then names it matches and names it does not.
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("*.json", &["a.json", ".json", ".hidden.json", "x.y.json"], &["a.jsonx", "a.yml", "json"]),
            ("tg_*.yml", &["tg_.yml", "tg_a.yml", "tg_a_b.yml"], &["tg.yml", "xtg_a.yml", "tg_a.yaml"]),
            ("*a*b*.yaml", &["ab.yaml", "xaybz.yaml", "aab.yaml", "abab.yaml"], &["ba.yaml", "a.yaml", "b.yaml"]),
            ("s?.json", &["s1.json", "sé.json"], &["s.json", "s12.json"]),
            ("s[0-9].json", &["s0.json", "s9.json"], &["sa.json", "s10.json"]),
            ("s[^0-9].json", &["sa.json", "s-.json"], &["s5.json"]),
            ("s[ab-d].json", &["sa.json", "sc.json", "sd.json"], &["se.json", "s-.json"]),
            (r"s\*.json", &["s*.json"], &["sx.json"]),
            (r"s[\]].json", &["s].json"], &["s[.json"]),
            // As Go: reversed range ends are valid and match nothing.
            ("s[z-a].json", &[], &["sa.json", "sz.json", "sm.json"]),
            ("*", &["", "anything"], &[]),
        ];
        for (pat, yes, no) in cases {
            let t = parse_pattern(pat).unwrap_or_else(|e| panic!("{pat}: {e}"));
            for n in *yes {
                assert!(pattern_matches(&t, n), "{pat} should match {n:?}");
            }
            for n in *no {
                assert!(!pattern_matches(&t, n), "{pat} should not match {n:?}");
            }
        }
        for bad in ["s[.json", "s[].json", "s[a-].json", "s\\", "[^]x"] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
        // Flag values: the name must say the format; only the file name is a pattern.
        let cases: &[(&str, Option<&str>)] = &[
            ("/etc/norn/stores.yaml", None),
            ("/etc/norn/*.json", None),
            ("rel/tg_*.YML", None),
            ("*.yml", None),
            // Prometheus's rule: all lower or all upper case.
            ("/etc/norn/stores.Json", Some("unsupported file extension")),
            ("/etc/norn/*.txt", Some("unsupported file extension")),
            ("/etc/norn/*", Some("unsupported file extension")),
            ("/etc/*/stores.yml", Some("not a directory")),
            ("/etc/n[o]rn/stores.yml", Some("not a directory")),
            ("/etc/norn/s[.yml", Some("malformed character class")),
        ];
        for (p, want) in cases {
            let got = check_sd_file_name(std::path::Path::new(p));
            match want {
                None => assert!(got.is_ok(), "{p}: {got:?}"),
                Some(w) => {
                    let e = got.expect_err(p);
                    assert!(e.contains(w) && e.contains(p), "{p}: {e}");
                }
            }
        }
    }

    /// A glob picks up files as they appear, drops the targets of files that go, keeps
    /// the last good targets of a file that breaks (naming it), and reads JSON and YAML
    /// side by side; directories and other names in the directory are left alone.
    /// resolv.conf is read again on each call; a text with neither name server nor search
    /// list (caught mid-rewrite, emptied) keeps what was read before.
    #[tokio::test]
    async fn resolv_conf_reread_keeps_last_good_text() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("resolv.conf");
        let set = EndpointSet::with_resolv_conf(
            EndpointSetConfig {
                specs: vec![],
                sd_files: vec![],
                dns_server: Some("127.0.0.1:1".parse().unwrap()),
                info_timeout: Duration::from_millis(200),
            },
            conf.clone(),
        );
        let domains = |set: &EndpointSet| set.reread_resolv_conf().1.domains;
        assert!(domains(&set).is_empty(), "no file yet");
        for (text, want) in [
            ("nameserver 10.0.0.1\nsearch a.test\n", vec!["a.test"]),
            ("", vec!["a.test"]),
            ("# being rewritten\n", vec!["a.test"]),
            ("search b.test c.test\n", vec!["b.test", "c.test"]),
            ("nameserver 10.0.0.1\n", vec![]),
        ] {
            std::fs::write(&conf, text).unwrap();
            assert_eq!(domains(&set), want, "after writing {text:?}");
        }
    }

    #[tokio::test]
    async fn sd_file_glob_follows_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let set = EndpointSet::new(EndpointSetConfig {
            specs: vec![],
            sd_files: vec![d.join("tg_*.json"), d.join("tg_*.yml"), d.join("tg_a.json")],
            dns_server: Some("127.0.0.1:1".parse().unwrap()),
            info_timeout: Duration::from_millis(200),
        });
        let addrs = |set: &EndpointSet| set.all().iter().map(|e| e.addr.clone()).collect::<Vec<_>>();
        set.refresh().await;
        assert!(addrs(&set).is_empty());
        std::fs::write(d.join("tg_a.json"), r#"[{"targets": ["127.0.0.1:1"]}]"#).unwrap();
        std::fs::write(d.join("tg_b.yml"), "- targets: ['127.0.0.1:2']\n").unwrap();
        std::fs::write(d.join("other.json"), r#"[{"targets": ["127.0.0.1:9"]}]"#).unwrap();
        std::fs::create_dir(d.join("tg_dir.json")).unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(set.sd_file_errors().is_empty(), "{:?}", set.sd_file_errors());
        // A third file appears; the second breaks and keeps its targets.
        std::fs::write(d.join("tg_c.yml"), "- targets: ['127.0.0.1:3']\n").unwrap();
        std::fs::write(d.join("tg_b.yml"), "- targets: ['127.0.0.1:4'\n").unwrap();
        // A matched name with pattern characters is a name: read as any other file.
        std::fs::write(d.join("tg_[x.json"), r#"[{"targets": ["127.0.0.1:5"]}]"#).unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:5"]);
        let errs = set.sd_file_errors();
        assert_eq!(errs.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), [d.join("tg_b.yml")]);
        assert!(errs[0].1.contains("tg_b.yml"), "{}", errs[0].1);
        // The broken file goes: its kept targets go with it, and so does its error.
        std::fs::remove_file(d.join("tg_b.yml")).unwrap();
        std::fs::remove_file(d.join("tg_a.json")).unwrap();
        std::fs::remove_file(d.join("tg_[x.json")).unwrap();
        set.refresh().await;
        assert_eq!(addrs(&set), ["127.0.0.1:3"]);
        assert!(set.sd_file_errors().is_empty());
        // A pattern whose directory does not exist matches nothing.
        let set = EndpointSet::new(EndpointSetConfig {
            specs: vec![],
            sd_files: vec![d.join("missing").join("*.yml")],
            dns_server: None,
            info_timeout: Duration::from_millis(200),
        });
        set.refresh().await;
        assert!(addrs(&set).is_empty());
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
