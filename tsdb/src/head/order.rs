//! The label order of the head's series, kept as ranks so that selects sort by integers.
//!
//! Sorting a select's series by their labels was a large part of a query's CPU in the
//! head (every query compares label sets again, though they never change). A *ranking*
//! sorts all series once and gives each its position, tagged with the ranking's epoch;
//! ranks of one epoch order series exactly as their labels do. A select sorts the series
//! ranked in the current epoch by rank, the others (created since, or ranked in an epoch
//! not yet or no longer current) by labels, and merges the two runs by labels, galloping,
//! so a few unranked series cost a few binary searches.
//!
//! Ranking runs again once the series created since the last one reach a quarter of the
//! ranked ones (at least [`MIN_NEW`]): under churn its cost, `n log n` label comparisons,
//! is spread over `n / 4` new series, and meanwhile selects cost no more than sorting by
//! labels did (the unranked run is sorted that way, the merge is linear at worst). It
//! runs on one worker thread shared by every head of the process, so that no query waits
//! for it and many heads (one per tenant) do not start a thread each; when the worker's
//! short queue is full, the ranking is left for a later select to start.
//!
//! Race-free: a ranking stores every series' rank before publishing its epoch (release),
//! and a select reads the epoch (acquire) before the ranks, so every rank it accepts
//! comes from that one ranking; series created or dropped meanwhile are merely unranked
//! or absent.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};

use super::series::MemSeries;

/// Fewest new series that start a ranking.
const MIN_NEW: usize = 16;

/// The ranking state of a head.
#[derive(Debug, Default)]
pub(crate) struct Ranking {
    /// Epoch of the published ranking; 0 before the first.
    epoch: AtomicU32,
    /// A ranking is running (at most one at a time).
    running: AtomicBool,
    /// Series ranked by the published ranking.
    ranked: AtomicUsize,
    /// Series created since the last ranking started.
    created: AtomicUsize,
}

/// `MemSeries::rank` of a series never ranked.
pub(crate) const NO_RANK: u64 = 0;

fn rank_of(s: &MemSeries, epoch: u32) -> Option<u32> {
    let r = s.rank.load(Ordering::Relaxed);
    (epoch != 0 && (r >> 32) as u32 == epoch).then_some(r as u32)
}

impl Ranking {
    /// The published epoch (0 before the first ranking).
    #[cfg(test)]
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Series ranked by the published ranking (less those removed since).
    #[cfg(test)]
    pub fn ranked(&self) -> usize {
        self.ranked.load(Ordering::Relaxed)
    }

    /// Counts a new series (it has no rank yet).
    pub fn note_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// `series` (one per label set) sorted by labels. When enough series are unranked,
    /// starts a ranking of `all()` on another thread.
    pub fn sort(
        self: &Arc<Self>,
        series: Vec<Arc<MemSeries>>,
        all: impl FnOnce() -> Vec<Arc<MemSeries>>,
    ) -> Vec<Arc<MemSeries>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut ranked: Vec<(u32, Arc<MemSeries>)> = Vec::with_capacity(series.len());
        let mut fresh: Vec<Arc<MemSeries>> = Vec::new();
        for s in series {
            match rank_of(&s, epoch) {
                Some(r) => ranked.push((r, s)),
                None => fresh.push(s),
            }
        }
        // Unstable: ranks of one epoch are distinct, and so are the head's label sets.
        ranked.sort_unstable_by_key(|x| x.0);
        if fresh.is_empty() {
            return ranked.into_iter().map(|x| x.1).collect();
        }
        fresh.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        if self.due() {
            self.start(all());
        }
        merge(ranked, fresh)
    }

    /// Whether a ranking should start now (and none is running): claims it if so, and
    /// restarts the count of new series before the caller takes its snapshot, so series
    /// created after the snapshot are counted for the next ranking (some counted ones may
    /// be in the snapshot: harmless).
    fn due(&self) -> bool {
        let new = self.created.load(Ordering::Relaxed);
        let claimed = new >= (self.ranked.load(Ordering::Relaxed) / 4).max(MIN_NEW)
            && !self.running.load(Ordering::Relaxed)
            && !self.running.swap(true, Ordering::AcqRel);
        if claimed {
            self.created.store(0, Ordering::Relaxed);
        }
        claimed
    }

    /// Queues the ranking of `all` for the shared worker. When the queue is full or the
    /// worker cannot be started, the claim is given up and the next select that finds
    /// enough unranked series tries again.
    fn start(self: &Arc<Self>, all: Vec<Arc<MemSeries>>) {
        let job = Job { ranking: self.clone(), all };
        if worker().is_none_or(|tx| tx.try_send(job).is_err()) {
            self.running.store(false, Ordering::Release);
        }
    }

    /// Counts series removed from the head (garbage collection) that the published
    /// ranking ranked, so that the next ranking is due after as many new series as if
    /// they had never been there.
    pub fn note_removed(&self, ranked: usize) {
        if ranked > 0 {
            let _ = self.ranked.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| Some(r.saturating_sub(ranked)));
        }
    }

    /// Whether the published ranking ranked `s`.
    pub fn is_ranked(&self, s: &MemSeries) -> bool {
        rank_of(s, self.epoch.load(Ordering::Acquire)).is_some()
    }

    /// Takes a snapshot of the series with `all` and ranks it on this thread, after a
    /// running ranking (which always ends) has finished.
    #[cfg(test)]
    pub fn rank_now(&self, all: impl FnOnce() -> Vec<Arc<MemSeries>>) {
        while self.running.swap(true, Ordering::AcqRel) {
            std::thread::yield_now();
        }
        self.created.store(0, Ordering::Relaxed);
        self.rank(all());
    }

    /// Ranks `all` (a snapshot of the head's series) under a new epoch and publishes it;
    /// the caller has claimed `running`.
    fn rank(&self, mut all: Vec<Arc<MemSeries>>) {
        if u32::try_from(all.len()).is_ok() {
            all.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
            let mut epoch = self.epoch.load(Ordering::Relaxed).wrapping_add(1);
            if epoch == 0 {
                epoch = 1;
            }
            for (i, s) in all.iter().enumerate() {
                s.rank.store((u64::from(epoch) << 32) | i as u64, Ordering::Relaxed);
            }
            self.ranked.store(all.len(), Ordering::Relaxed);
            self.epoch.store(epoch, Ordering::Release);
        }
        self.running.store(false, Ordering::Release);
    }
}

/// Rankings waiting for the worker, at most: each holds a snapshot of a head's series.
const QUEUE: usize = 4;

/// A ranking for the worker: the head's state and a snapshot of its series.
struct Job {
    ranking: Arc<Ranking>,
    all: Vec<Arc<MemSeries>>,
}

/// The sending end of the process's ranking worker, started on first use; `None` when no
/// thread could be started (tried again on the next call).
fn worker() -> Option<&'static SyncSender<Job>> {
    static WORKER: OnceLock<SyncSender<Job>> = OnceLock::new();
    static START: Mutex<()> = Mutex::new(());
    if let Some(tx) = WORKER.get() {
        return Some(tx);
    }
    let _g = START.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = WORKER.get() {
        return Some(tx);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
    std::thread::Builder::new()
        .name("head-ranking".into())
        .spawn(move || {
            for Job { ranking, all } in rx {
                // A panic must not leave the head's ranking claimed forever, nor end the
                // worker of every head.
                let r = ranking.clone();
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || r.rank(all))).is_err() {
                    ranking.running.store(false, Ordering::Release);
                }
            }
        })
        .ok()?;
    Some(WORKER.get_or_init(|| tx))
}

/// Merges `ranked` and `fresh`, each sorted by labels, galloping through `ranked` for
/// each of `fresh`: `m log(n/m)` comparisons for `m` fresh among `n` ranked series, never
/// more than about `n + m`.
fn merge(ranked: Vec<(u32, Arc<MemSeries>)>, fresh: Vec<Arc<MemSeries>>) -> Vec<Arc<MemSeries>> {
    let n = ranked.len();
    let mut cuts = Vec::with_capacity(fresh.len());
    let mut from = 0;
    for f in &fresh {
        let below = |x: &(u32, Arc<MemSeries>)| x.1.labels < f.labels;
        // `ranked[from..lo]` are below `f`; `ranked[hi]` (if any) is not.
        let (mut lo, mut hi, mut step) = (from, from, 1);
        while hi < n && below(&ranked[hi]) {
            lo = hi + 1;
            hi += step;
            step *= 2;
        }
        from = lo + ranked[lo..hi.min(n)].partition_point(below);
        cuts.push(from);
    }
    let mut out = Vec::with_capacity(n + fresh.len());
    let mut ranked = ranked.into_iter().map(|x| x.1);
    let mut at = 0;
    for (f, cut) in fresh.into_iter().zip(cuts) {
        out.extend(ranked.by_ref().take(cut - at));
        at = cut;
        out.push(f);
    }
    out.extend(ranked);
    out
}
