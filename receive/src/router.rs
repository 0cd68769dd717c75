//! Replication: each series goes to `replication-factor` endpoints of the tenant's
//! ring; local replicas are appended in-process, remote ones forwarded over gRPC
//! (`thanos.WriteableStore/RemoteWrite`, fields 1–3, replica = n + 1) in parallel. A
//! write succeeds when every series reached the write quorum.
//!
//! Unlike Thanos, a successful write is answered only once every replica has answered
//! too (or a bounded wait has passed): see [`Router::write`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::thanos;
use norn_storeapi::thanos::writeable_store_client::WriteableStoreClient;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::hashring::{MultiRing, series_hash};
use crate::metrics::Metrics;
use crate::tenants::MultiTsdb;
use crate::write::{AppendStats, WriteError, append_local};
use norn_storeapi::labels_to_proto;
use norn_storeapi::remote_write::describe_labels;

/// Thanos's write quorum: 1 for RF 2, else a majority.
pub fn quorum(rf: usize) -> usize {
    if rf == 2 { 1 } else { rf / 2 + 1 }
}

/// Longest a failing peer is skipped before being tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Peer {
    channel: Channel,
    down_until: Option<Instant>,
    backoff: Duration,
}

/// Shortest interval between two warnings about lagging replicas: with a peer down,
/// every request would log one.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a successful write waits for its lagging replicas (counted from the forwards'
/// start, and never beyond the forward timeout). Healthy replicas answer within
/// milliseconds of each other; a peer that hangs with its connection open must not hold
/// every write for the whole forward timeout.
const MAX_REPLICA_WAIT: Duration = Duration::from_secs(1);

/// gRPC connections to peers, with a backoff for peers that answered `Unavailable`.
#[derive(Debug)]
pub struct Peers {
    peers: Mutex<HashMap<String, Peer>>,
    timeout: Duration,
    max_message: usize,
    /// When a lagging-replica warning was last logged, and how many were held back since.
    lag_log: Mutex<(Option<Instant>, u64)>,
}

impl Peers {
    /// Peers reached with `timeout` per forward (also the longest a successful write
    /// waits for its slowest replica) and messages up to `max_message` bytes.
    pub fn new(timeout: Duration, max_message: usize) -> Peers {
        Peers { peers: Mutex::new(HashMap::new()), timeout, max_message, lag_log: Mutex::new((None, 0)) }
    }

    /// Whether to log a lagging-replica warning now; `Some(n)` with the number of
    /// warnings suppressed since the last one.
    fn lag_log_due(&self) -> Option<u64> {
        let mut g = self.lag_log.lock();
        let now = Instant::now();
        if g.0.is_some_and(|t| now.duration_since(t) < LAG_LOG_INTERVAL) {
            g.1 += 1;
            return None;
        }
        let held = g.1;
        *g = (Some(now), 0);
        Some(held)
    }

    fn channel(&self, addr: &str) -> Result<Channel, WriteError> {
        let mut g = self.peers.lock();
        if let Some(p) = g.get(addr) {
            if p.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(WriteError::Unavailable(format!("peer {addr} is unavailable (backing off)")));
            }
            return Ok(p.channel.clone());
        }
        let ep = TonicEndpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| WriteError::Internal(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let channel = ep.connect_lazy();
        g.insert(addr.to_string(), Peer { channel: channel.clone(), down_until: None, backoff: MIN_BACKOFF });
        Ok(channel)
    }

    fn mark(&self, addr: &str, ok: bool) {
        let mut g = self.peers.lock();
        if let Some(p) = g.get_mut(addr) {
            if ok {
                p.down_until = None;
                p.backoff = MIN_BACKOFF;
            } else {
                p.down_until = Some(Instant::now() + p.backoff);
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Sends one forwarding request.
    pub async fn forward(
        &self,
        addr: &str,
        tenant: &str,
        timeseries: Vec<TimeSeries>,
        replica: i64,
    ) -> Result<(), WriteError> {
        let ch = self.channel(addr)?;
        let mut client = WriteableStoreClient::new(ch)
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        let req = thanos::WriteRequest {
            timeseries,
            tenant: tenant.to_string(),
            replica,
            timeseries_tenant_data: Vec::new(),
        };
        let mut r = tonic::Request::new(req);
        r.set_timeout(self.timeout);
        match client.remote_write(r).await {
            Ok(_) => {
                self.mark(addr, true);
                Ok(())
            }
            Err(s) => {
                let e = WriteError::from_status(&s);
                if matches!(e, WriteError::Unavailable(_)) {
                    self.mark(addr, false);
                }
                Err(match e {
                    WriteError::Unavailable(m) => WriteError::Unavailable(format!("forward to {addr}: {m}")),
                    WriteError::Internal(m) => WriteError::Internal(format!("forward to {addr}: {m}")),
                    e => e,
                })
            }
        }
    }
}

/// A validated request of one tenant.
#[derive(Debug)]
pub struct Batch {
    pub tenant: String,
    /// The series; their `labels` may be empty (see
    /// [`norn_storeapi::remote_write::Decoded::series`]): `labels` is authoritative.
    pub series: Vec<TimeSeries>,
    pub labels: Vec<Labels>,
}

/// Routes validated writes to local storage and peers.
#[derive(Debug)]
pub struct Router {
    pub rf: usize,
    pub local_endpoint: String,
    pub ring: RwLock<Arc<MultiRing>>,
    pub tsdb: Arc<MultiTsdb>,
    pub peers: Peers,
    pub metrics: Arc<Metrics>,
    /// Every tenant's exemplar buffer.
    pub exemplars: Arc<crate::exemplars::TenantExemplars>,
}

/// One replica write's answer: where it went (a peer address, or `None` for the local
/// append), the series it carried, and per series the error if any.
type Outcome = (Option<String>, Arc<Vec<usize>>, Result<Vec<Option<WriteError>>, WriteError>);

/// A replica write that failed or did not answer in a write that reached quorum.
#[derive(Debug)]
enum Lagging {
    Failed { target: String, error: String },
    Timeout { running: usize },
}

impl Router {
    /// The current ring.
    pub fn ring(&self) -> Arc<MultiRing> {
        self.ring.read().clone()
    }

    /// Appends series `idx` of the batch locally, on a blocking thread.
    async fn local(
        self: &Arc<Self>,
        batch: Arc<Batch>,
        idx: Arc<Vec<usize>>,
    ) -> Result<Vec<Option<WriteError>>, WriteError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let ring_labels = me.ring().external_labels(&batch.tenant);
            let db = me
                .tsdb
                .get_or_open(&batch.tenant, &ring_labels)
                .map_err(|e| WriteError::Internal(format!("opening TSDB of tenant {}: {e}", batch.tenant)))?;
            let mut st = AppendStats::default();
            let r = append_local(&db, &batch.series, &batch.labels, &idx, &mut st, &me.exemplars);
            me.metrics.record_append(&st);
            r
        })
        .await
        .map_err(|e| WriteError::Internal(format!("local write task: {e}")))?
    }

    /// Writes a batch. `replica` is the 1-based replica number carried by a forwarded
    /// request (0 for a fresh one); a forwarded request is stored locally and never
    /// forwarded again.
    ///
    /// A fresh request is sent to all replicas at once. Once the outcome is a failure
    /// (some series can no longer reach the write quorum) it is answered at once. Once
    /// it is a success, the answer still waits for the replicas that are running until
    /// all have answered or [`MAX_REPLICA_WAIT`] (at most the forward timeout) has passed
    /// since the forwards started;
    /// their failures are then logged and counted
    /// (`norn_receive_replica_failures_total`), not returned.
    ///
    /// This deliberately differs from Thanos, which answers at quorum and lets the last
    /// replica finish in the background. A client that sends a series' next batch only
    /// after this one was answered (Prometheus's remote write does, per shard) could
    /// then have that batch reach the lagging replica first, which drops the late
    /// batch's samples as out of order: replicas drift apart. Waiting keeps them equal,
    /// so a querier's deduplication can rely on identical replica chunks. A peer that is
    /// down fails fast and costs nothing; a slow or hung one costs latency, bounded by
    /// [`MAX_REPLICA_WAIT`].
    pub async fn write(self: &Arc<Self>, batch: Batch, replica: i64) -> Result<(), WriteError> {
        if replica < 0 || replica as usize > self.rf {
            return Err(WriteError::BadRequest(format!(
                "replica {replica} out of range for replication factor {}",
                self.rf
            )));
        }
        if batch.series.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(batch);
        if replica > 0 {
            let idx = Arc::new((0..batch.series.len()).collect::<Vec<_>>());
            let per = self.local(batch.clone(), idx).await?;
            return match per.into_iter().flatten().next() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }

        let ring = self.ring();
        let rf = self.rf;
        let mut local_idx = Vec::new();
        let mut remote: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
        let tenant_ring = ring.ring_for(&batch.tenant).map_err(|e| WriteError::Internal(e.to_string()))?;
        if let [only] = tenant_ring.endpoints() {
            // A one-node ring places every series there: no hashing needed.
            if rf > 1 {
                return Err(WriteError::Internal(format!("insufficient nodes; have 1, want {rf}")));
            }
            if only.address == self.local_endpoint {
                local_idx.extend(0..batch.series.len());
            } else {
                remote.insert((only.address.clone(), 0), (0..batch.series.len()).collect());
            }
        } else {
            for (i, l) in batch.labels.iter().enumerate() {
                let h = series_hash(&batch.tenant, l.iter());
                for n in 0..rf {
                    let ep = tenant_ring.get_n(h, n).map_err(|e| WriteError::Internal(e.to_string()))?;
                    if ep.address == self.local_endpoint {
                        local_idx.push(i);
                    } else {
                        remote.entry((ep.address.clone(), n)).or_default().push(i);
                    }
                }
            }
        }

        // The wait after quorum counts from here.
        let deadline = tokio::time::Instant::now() + self.peers.timeout.min(MAX_REPLICA_WAIT);
        let mut running = usize::from(!local_idx.is_empty()) + remote.len();
        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        if !local_idx.is_empty() {
            let (me, b, tx) = (self.clone(), batch.clone(), tx.clone());
            let idx = Arc::new(local_idx);
            tokio::spawn(async move {
                let r = me.local(b, idx.clone()).await;
                let _ = tx.send((None, idx, r));
            });
        }
        for ((addr, n), idx) in remote {
            let (me, b, tx) = (self.clone(), batch.clone(), tx.clone());
            let idx = Arc::new(idx);
            // Spawned, so a forward still running when a failure is answered, or at the
            // end of the wait after quorum, still completes (within its own timeout).
            tokio::spawn(async move {
                // Series decoded by the fast path carry no wire labels: rebuilt here.
                let ts: Vec<TimeSeries> = idx
                    .iter()
                    .map(|&i| {
                        let mut ts = b.series[i].clone();
                        if ts.labels.is_empty() {
                            ts.labels = labels_to_proto(&b.labels[i]);
                        }
                        ts
                    })
                    .collect();
                let start = Instant::now();
                let r = me.peers.forward(&addr, &b.tenant, ts, n as i64 + 1).await;
                me.metrics.record_forward(start.elapsed(), r.is_ok());
                let r = r.map(|()| vec![None; idx.len()]);
                let _ = tx.send((Some(addr), idx, r));
            });
        }
        drop(tx);

        let q = quorum(rf);
        let fail_at = rf - q + 1;
        let n = batch.series.len();
        let mut ok = vec![0usize; n];
        let mut errs: Vec<Vec<WriteError>> = vec![Vec::new(); n];
        let mut undecided = n;
        let mut any_failed = false;
        let mut lagging: Vec<Lagging> = Vec::new();
        while running > 0 {
            let next = if undecided > 0 {
                // Undecided: every replica's answer may matter; the forwards carry their
                // own timeout.
                rx.recv().await
            } else {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(r) => r,
                    Err(_) => {
                        lagging.push(Lagging::Timeout { running });
                        break;
                    }
                }
            };
            let Some((target, idx, res)) = next else { break };
            running -= 1;
            let mut first_err: Option<&WriteError> = None;
            for (k, &i) in idx.iter().enumerate() {
                let was_decided = ok[i] >= q || errs[i].len() >= fail_at;
                let e = match &res {
                    Ok(per) => per.get(k).cloned().flatten(),
                    Err(e) => Some(e.clone()),
                };
                match e {
                    None => ok[i] += 1,
                    Some(e) => errs[i].push(e),
                }
                if !was_decided && (ok[i] >= q || errs[i].len() >= fail_at) {
                    undecided -= 1;
                    any_failed |= ok[i] < q;
                }
            }
            match &res {
                Err(e) => first_err = Some(e),
                Ok(per) => first_err = first_err.or(per.iter().flatten().next()),
            }
            if let Some(e) = first_err {
                let target = target.unwrap_or_else(|| format!("local ({})", self.local_endpoint));
                lagging.push(Lagging::Failed { target, error: e.to_string() });
            }
            if any_failed {
                // Decided as a failure: waiting for the rest gains nothing.
                break;
            }
        }
        // Answered early on a failure: the series still undecided then are not counted
        // (nor their errors so far, which would change the error class), as before.
        let failed: Vec<usize> = (0..n).filter(|&i| ok[i] < q && (!any_failed || errs[i].len() >= fail_at)).collect();
        if failed.is_empty() {
            self.report_lagging(&batch.tenant, n, &lagging);
            return Ok(());
        }
        self.metrics.quorum_failures.inc();
        let all: Vec<&WriteError> = failed.iter().flat_map(|&i| errs[i].iter()).collect();
        let first = failed[0];
        let detail = errs[first].first().map(|e| e.to_string()).unwrap_or_else(|| "no answer".into());
        let msg = format!(
            "quorum ({q} of {rf}) not reached for {} of {n} series; first: {}: {detail}",
            failed.len(),
            describe_labels(&batch.labels[first])
        );
        Err(if !all.is_empty() && all.iter().all(|e| matches!(e, WriteError::Conflict(_))) {
            WriteError::Conflict(msg)
        } else if !all.is_empty()
            && all.iter().all(|e| matches!(e, WriteError::Conflict(_) | WriteError::BadRequest(_)))
        {
            WriteError::BadRequest(msg)
        } else if all.iter().all(|e| matches!(e, WriteError::Internal(_))) && !all.is_empty() {
            WriteError::Internal(msg)
        } else {
            WriteError::Unavailable(msg)
        })
    }
}

impl Router {
    /// Logs and counts the replica writes of a successful write that failed or did not
    /// answer in time: the write was acknowledged, but those replicas may miss it.
    fn report_lagging(&self, tenant: &str, series: usize, lagging: &[Lagging]) {
        for l in lagging {
            let reason = match l {
                Lagging::Failed { .. } => "error",
                Lagging::Timeout { .. } => "timeout",
            };
            let n = match l {
                Lagging::Failed { .. } => 1,
                Lagging::Timeout { running } => *running as u64,
            };
            self.metrics.record_replica_failure(reason, n);
            let Some(suppressed) = self.peers.lag_log_due() else { continue };
            match l {
                Lagging::Failed { target, error } => tracing::warn!(
                    tenant,
                    series,
                    replica = %target,
                    error = %error,
                    suppressed,
                    "replica write failed in a write that reached quorum; that replica may miss samples"
                ),
                Lagging::Timeout { running } => tracing::warn!(
                    tenant,
                    series,
                    replicas = running,
                    waited = ?self.peers.timeout.min(MAX_REPLICA_WAIT),
                    suppressed,
                    "replica writes still running at the end of the wait in a write that reached quorum; answered"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use norn_storeapi::prometheus_copy::Sample;
    use norn_storeapi::thanos::writeable_store_server::{WriteableStore, WriteableStoreServer};
    use norn_storeapi::thanos::{Label, WriteRequest, WriteResponse};
    use norn_tsdb::head::HeadOptions;
    use prometheus_client::registry::Registry;

    use crate::exemplars::TenantExemplars;
    use crate::hashring::{Algorithm, parse_config};
    use crate::tenants::TsdbSettings;

    /// How a test peer answers a forward.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// After this long, having recorded the request.
        After(Duration),
        /// Never (the request stays open until the client gives up).
        Never,
    }

    /// A peer receiver: records the forwarded requests it accepted.
    #[derive(Debug, Clone)]
    struct TestPeer {
        answer: Answer,
        got: Arc<Mutex<Vec<WriteRequest>>>,
    }

    #[tonic::async_trait]
    impl WriteableStore for TestPeer {
        async fn remote_write(
            &self,
            req: tonic::Request<WriteRequest>,
        ) -> Result<tonic::Response<WriteResponse>, tonic::Status> {
            match self.answer {
                Answer::After(d) => {
                    tokio::time::sleep(d).await;
                    self.got.lock().push(req.into_inner());
                    Ok(tonic::Response::new(WriteResponse {}))
                }
                Answer::Never => std::future::pending().await,
            }
        }
    }

    /// Starts a peer on an ephemeral port of 127.0.0.1.
    async fn start_peer(answer: Answer) -> (String, Arc<Mutex<Vec<WriteRequest>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let peer = TestPeer { answer, got: Arc::default() };
        let got = peer.got.clone();
        let server = tonic::transport::Server::builder()
            .add_service(WriteableStoreServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
        tokio::spawn(server);
        (addr, got)
    }

    /// An address nothing listens on (bound, then released).
    fn dead_addr() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    const LOCAL: &str = "local-receiver:10901";

    /// An RF=3 router on a three-endpoint ring (itself and `peers`): every series goes
    /// to all three.
    fn router(dir: &std::path::Path, peers: [&str; 2], timeout: Duration) -> Arc<Router> {
        let json = format!(r#"[{{"endpoints": ["{LOCAL}", "{}", "{}"]}}]"#, peers[0], peers[1]);
        let ring = MultiRing::new(&parse_config(&json).unwrap(), Algorithm::Hashmod, 3).unwrap();
        let tsdb = MultiTsdb::new(TsdbSettings {
            root: dir.to_path_buf(),
            head: HeadOptions::default(),
            labels: Vec::new(),
            tenant_label: "tenant_id".into(),
        });
        Arc::new(Router {
            rf: 3,
            local_endpoint: LOCAL.into(),
            ring: RwLock::new(Arc::new(ring)),
            tsdb: Arc::new(tsdb),
            peers: Peers::new(timeout, 1 << 20),
            metrics: Arc::new(Metrics::new(&mut Registry::default())),
            exemplars: Arc::new(TenantExemplars::new(0)),
        })
    }

    fn batch(t: i64) -> Batch {
        let series: Vec<TimeSeries> = (0..4)
            .map(|i| TimeSeries {
                labels: vec![
                    Label { name: "__name__".into(), value: "m".into() },
                    Label { name: "i".into(), value: i.to_string() },
                ],
                samples: vec![Sample { value: i as f64, timestamp: t }],
                ..Default::default()
            })
            .collect();
        let labels = norn_storeapi::remote_write::validate(&series, &Default::default()).unwrap();
        Batch { tenant: "t".into(), series, labels }
    }

    /// The (series, timestamp) pairs a peer accepted, in arrival order: a batch reaches
    /// a peer as up to three requests (one per replica number it holds).
    fn samples(got: &Mutex<Vec<WriteRequest>>) -> Vec<(String, i64)> {
        let g = got.lock();
        let each = g.iter().flat_map(|w| &w.timeseries);
        each.flat_map(|ts| ts.samples.iter().map(|s| (ts.labels[1].value.clone(), s.timestamp))).collect()
    }

    fn failures(r: &Router, reason: &str) -> u64 {
        r.metrics.replica_failures.get_or_create(&vec![("reason".to_string(), reason.to_string())]).get()
    }

    /// Bounds a write so a hang fails the test instead of blocking it.
    async fn bounded(r: &Arc<Router>, b: Batch) -> Result<(), WriteError> {
        tokio::time::timeout(Duration::from_secs(60), r.write(b, 0)).await.expect("write did not return")
    }

    /// Quorum (local + the fast peer) is reached long before the slow peer answers; the
    /// write must still return only after the slow peer stored the batch, so the
    /// client's next batch cannot overtake it there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn success_waits_for_a_slow_replica() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, fast_got) = start_peer(Answer::After(Duration::ZERO)).await;
        let (slow, slow_got) = start_peer(Answer::After(Duration::from_millis(300))).await;
        let r = router(dir.path(), [&fast, &slow], Duration::from_secs(30));
        for t in 0..3 {
            bounded(&r, batch(t * 1000)).await.unwrap();
            assert_eq!(samples(&slow_got).len(), 4 * (t as usize + 1), "the slow replica has batch {t} when answered");
            assert_eq!(samples(&fast_got).len(), 4 * (t as usize + 1));
        }
        let mut got = samples(&slow_got);
        got.sort();
        let want: Vec<(String, i64)> = (0..4).flat_map(|i| (0..3).map(move |t| (i.to_string(), t * 1000))).collect();
        assert_eq!(got, want);
        assert_eq!((failures(&r, "error"), failures(&r, "timeout")), (0, 0));
        let db = r.tsdb.get("t").expect("local tenant");
        assert_eq!(db.head.num_series(), 4);
    }

    /// A replica that never answers delays a successful write by at most the forward
    /// timeout; the write still succeeds and the lag is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn success_is_answered_at_the_forward_timeout_when_a_replica_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, fast_got) = start_peer(Answer::After(Duration::ZERO)).await;
        let (hung, hung_got) = start_peer(Answer::Never).await;
        let r = router(dir.path(), [&fast, &hung], Duration::from_millis(300));
        bounded(&r, batch(0)).await.unwrap();
        assert_eq!((samples(&fast_got).len(), samples(&hung_got).len()), (4, 0));
        // The hung peer holds one to three replica requests; each ends by its own
        // deadline or by the wait's end, which come at the same time.
        let lag = failures(&r, "error") + failures(&r, "timeout");
        assert!((1..=3).contains(&lag), "{lag}");
    }

    /// With a forward timeout longer than the test's bound, a hung replica still lets the
    /// write succeed: the wait after quorum is capped by [`MAX_REPLICA_WAIT`], not by the
    /// forward timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_for_a_hung_replica_is_capped_below_a_long_forward_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, fast_got) = start_peer(Answer::After(Duration::ZERO)).await;
        let (hung, _) = start_peer(Answer::Never).await;
        let r = router(dir.path(), [&fast, &hung], Duration::from_secs(600));
        bounded(&r, batch(0)).await.unwrap();
        assert_eq!(samples(&fast_got).len(), 4);
        // The hung peer holds one request per replica number it was given.
        assert!(failures(&r, "timeout") >= 1);
    }

    /// A down peer fails fast: the write succeeds with the other two and its failure
    /// is counted, not returned. With both peers down quorum fails and the error says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn down_peers() {
        let dir = tempfile::tempdir().unwrap();
        let (fast, fast_got) = start_peer(Answer::After(Duration::ZERO)).await;
        let r = router(dir.path(), [&fast, &dead_addr()], Duration::from_secs(30));
        bounded(&r, batch(0)).await.unwrap();
        assert_eq!(samples(&fast_got).len(), 4);
        assert!((1..=3).contains(&failures(&r, "error")), "one per replica request to the down peer");
        assert_eq!(failures(&r, "timeout"), 0);

        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), [&dead_addr(), &dead_addr()], Duration::from_secs(30));
        let e = bounded(&r, batch(0)).await.unwrap_err();
        assert!(matches!(e, WriteError::Unavailable(_)), "{e:?}");
        // Answered as soon as one series failed: how many are counted depends on which
        // replica requests failed first.
        assert!(e.to_string().contains("quorum (2 of 3) not reached for "), "{e}");
        assert_eq!(r.metrics.quorum_failures.get(), 1);
    }

    #[test]
    fn quorum_table() {
        for (rf, q) in [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 4)] {
            assert_eq!(quorum(rf), q, "rf {rf}");
        }
    }
}
