//! Replication: each series goes to `replication-factor` endpoints of the tenant's
//! ring; local replicas are appended in-process, remote ones forwarded over gRPC
//! (`thanos.WriteableStore/RemoteWrite`, fields 1–3, replica = n + 1) in parallel. A
//! write succeeds when every series reached the write quorum.

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
use norn_storeapi::remote_write::describe;

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

/// gRPC connections to peers, with a backoff for peers that answered `Unavailable`.
#[derive(Debug)]
pub struct Peers {
    peers: Mutex<HashMap<String, Peer>>,
    timeout: Duration,
    max_message: usize,
}

impl Peers {
    pub fn new(timeout: Duration, max_message: usize) -> Peers {
        Peers { peers: Mutex::new(HashMap::new()), timeout, max_message }
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

type Outcome = (Arc<Vec<usize>>, Result<Vec<Option<WriteError>>, WriteError>);

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
            let r = append_local(&db, &batch.series, &batch.labels, &idx, &mut st);
            me.exemplars.append(&batch.tenant, &batch.series, &batch.labels, &idx);
            me.metrics.record_append(&st);
            r
        })
        .await
        .map_err(|e| WriteError::Internal(format!("local write task: {e}")))?
    }

    /// Writes a batch. `replica` is the 1-based replica number carried by a forwarded
    /// request (0 for a fresh one); a forwarded request is stored locally and never
    /// forwarded again.
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

        let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
        if !local_idx.is_empty() {
            let (me, b, tx) = (self.clone(), batch.clone(), tx.clone());
            let idx = Arc::new(local_idx);
            tokio::spawn(async move {
                let r = me.local(b, idx.clone()).await;
                let _ = tx.send((idx, r));
            });
        }
        for ((addr, n), idx) in remote {
            let (me, b, tx) = (self.clone(), batch.clone(), tx.clone());
            let idx = Arc::new(idx);
            // Spawned, so a forward still running when quorum is reached completes
            // (within the forward timeout) and the extra replica is not lost.
            tokio::spawn(async move {
                let ts: Vec<TimeSeries> = idx.iter().map(|&i| b.series[i].clone()).collect();
                let start = Instant::now();
                let r = me.peers.forward(&addr, &b.tenant, ts, n as i64 + 1).await;
                me.metrics.record_forward(start.elapsed(), r.is_ok());
                let r = r.map(|()| vec![None; idx.len()]);
                let _ = tx.send((idx, r));
            });
        }
        drop(tx);

        let q = quorum(rf);
        let fail_at = rf - q + 1;
        let n = batch.series.len();
        let mut ok = vec![0usize; n];
        let mut errs: Vec<Vec<WriteError>> = vec![Vec::new(); n];
        let mut undecided = n;
        while undecided > 0 {
            let Some((idx, res)) = rx.recv().await else { break };
            for (k, &i) in idx.iter().enumerate() {
                let was_decided = ok[i] >= q || errs[i].len() >= fail_at;
                let e = match &res {
                    Ok(per) => per[k].clone(),
                    Err(e) => Some(e.clone()),
                };
                match e {
                    None => ok[i] += 1,
                    Some(e) => errs[i].push(e),
                }
                if !was_decided && (ok[i] >= q || errs[i].len() >= fail_at) {
                    undecided -= 1;
                }
            }
        }
        let failed: Vec<usize> = (0..n).filter(|&i| ok[i] < q).collect();
        if failed.is_empty() {
            return Ok(());
        }
        self.metrics.quorum_failures.inc();
        let all: Vec<&WriteError> = failed.iter().flat_map(|&i| errs[i].iter()).collect();
        let first = failed[0];
        let detail = errs[first].first().map(|e| e.to_string()).unwrap_or_else(|| "no answer".into());
        let msg = format!(
            "quorum ({q} of {rf}) not reached for {} of {n} series; first: {}: {detail}",
            failed.len(),
            describe(&batch.series[first].labels)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_table() {
        for (rf, q) in [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 4)] {
            assert_eq!(quorum(rf), q, "rf {rf}");
        }
    }
}
