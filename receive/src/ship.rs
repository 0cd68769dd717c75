//! Background maintenance of every tenant: cut head blocks, upload new blocks to the
//! bucket (meta.json last), apply retention to local blocks, refresh gauges.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use norn_block::{ShipperState, ThanosMeta, upload};
use norn_objstore::Bucket;
use norn_service::Shutdown;

use crate::metrics::Metrics;
use crate::tenants::{MultiTsdb, TenantDb};

/// Uploads a tenant's blocks that its shipper state does not list yet.
#[derive(Debug)]
pub struct Shipper {
    bucket: Bucket,
    metrics: Arc<Metrics>,
}

impl Shipper {
    pub fn new(bucket: Bucket, metrics: Arc<Metrics>) -> Shipper {
        Shipper { bucket, metrics }
    }

    /// Uploads every not-yet-shipped block of `db`; returns how many were uploaded.
    pub async fn sync(&self, db: &TenantDb) -> usize {
        let mut state = ShipperState::read(db.dir());
        let labels: BTreeMap<String, String> =
            db.ext_labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let t = ThanosMeta { labels, source: "receive".into(), resolution: 0 };
        let mut n = 0;
        for b in db.blocks() {
            let id = b.meta().ulid;
            if state.uploaded.contains(&id) {
                continue;
            }
            match upload(&self.bucket, b.dir(), &t).await {
                Ok(_) => {
                    tracing::info!(tenant = db.tenant, block = %id, "block uploaded");
                    self.metrics.blocks_uploaded.inc();
                    state.uploaded.push(id);
                    n += 1;
                    if let Err(e) = state.write(db.dir()) {
                        tracing::error!(tenant = db.tenant, error = %e, "writing shipper state");
                    }
                }
                Err(e) => {
                    self.metrics.upload_failures.inc();
                    tracing::error!(tenant = db.tenant, block = %id, error = %e, "block upload failed; will retry");
                }
            }
        }
        n
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One maintenance pass over every tenant.
pub async fn maintain_once(tsdb: &Arc<MultiTsdb>, shipper: Option<&Shipper>, metrics: &Metrics, retention_ms: i64) {
    let mut series = 0i64;
    for db in tsdb.all() {
        let d = db.clone();
        match tokio::task::spawn_blocking(move || d.compact()).await {
            Ok(Ok(metas)) => {
                for m in &metas {
                    tracing::info!(tenant = db.tenant, block = %m.ulid, min_time = m.min_time, max_time = m.max_time, "block cut from head");
                }
                metrics.blocks_cut.inc_by(metas.len() as u64);
            }
            Ok(Err(e)) => tracing::error!(tenant = db.tenant, error = %e, "head compaction failed"),
            Err(e) => tracing::error!(tenant = db.tenant, error = %e, "head compaction task failed"),
        }
        if let Some(s) = shipper {
            s.sync(&db).await;
        }
        if retention_ms > 0 {
            let cutoff = now_ms() - retention_ms;
            let shipped = shipper.map(|_| ShipperState::read(db.dir()).uploaded);
            let gone = db.apply_retention(cutoff, |m| shipped.as_ref().is_none_or(|u| u.contains(&m.ulid)));
            for id in gone {
                tracing::info!(tenant = db.tenant, block = %id, "block deleted by retention");
            }
        }
        series += db.head.num_series() as i64;
    }
    metrics.head_series.set(series);
    metrics.tenants.set(tsdb.all().len() as i64);
}

/// Runs [`maintain_once`] every `every` until shutdown.
pub async fn maintenance(
    tsdb: Arc<MultiTsdb>,
    shipper: Option<Arc<Shipper>>,
    metrics: Arc<Metrics>,
    retention_ms: i64,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        maintain_once(&tsdb, shipper.as_deref(), &metrics, retention_ms).await;
    }
}
