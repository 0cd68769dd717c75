//! Thanos receive hashrings: the JSON file format, tenant → ring resolution, and the
//! `hashmod` and `ketama` placement algorithms, reproducing Thanos's choices series by
//! series (`shared/spec/hashring.md`).

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::RwLock;
use serde::Deserialize;
use xxhash_rust::xxh64::{Xxh64, xxh64};

/// Sections each endpoint owns on a ketama ring.
pub const SECTIONS_PER_NODE: usize = 1000;

/// Separator Thanos writes after the tenant and after every label name and value.
const SEP: u8 = 0xff;

/// A placement or configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashringError {
    #[error("insufficient nodes; have {have}, want {want}")]
    InsufficientNodes { have: usize, want: usize },
    #[error("no matching hashring to handle tenant {0:?}")]
    NoMatchingRing(String),
    #[error("invalid hashring configuration: {0}")]
    Config(String),
}

/// The placement algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Algorithm {
    /// `(hash + n) mod N` over endpoints sorted by address.
    #[default]
    Hashmod,
    /// Consistent hashing with 1000 sections per endpoint, AZ-aware replicas.
    Ketama,
}

/// One endpoint of a ring: its gRPC address and availability zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: String,
    pub az: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum EndpointJson {
    Address(String),
    Object {
        address: String,
        #[serde(default)]
        az: String,
        #[serde(default)]
        #[allow(dead_code)]
        capnproto_address: Option<String>,
    },
}

/// One entry of the hashrings file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashringConfig {
    #[serde(default)]
    pub hashring: String,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub tenant_matcher_type: String,
    endpoints: Vec<EndpointJson>,
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub shuffle_sharding_config: Option<serde_json::Value>,
}

impl HashringConfig {
    /// The endpoints in file order.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints
            .iter()
            .map(|e| match e {
                EndpointJson::Address(a) => Endpoint { address: a.clone(), az: String::new() },
                EndpointJson::Object { address, az, .. } => Endpoint { address: address.clone(), az: az.clone() },
            })
            .collect()
    }
}

/// Parses a hashrings file. An empty list is an error, as in Thanos.
pub fn parse_config(text: &str) -> Result<Vec<HashringConfig>, HashringError> {
    let cfg: Vec<HashringConfig> = serde_json::from_str(text).map_err(|e| HashringError::Config(e.to_string()))?;
    if cfg.is_empty() {
        return Err(HashringError::Config("configuration file is empty".into()));
    }
    for (i, h) in cfg.iter().enumerate() {
        if h.endpoints.is_empty() {
            return Err(HashringError::Config(format!("hashring {i} ({:?}) has no endpoints", h.hashring)));
        }
        if h.shuffle_sharding_config.as_ref().is_some_and(|v| v.get("shard_size").and_then(|s| s.as_u64()) > Some(0)) {
            return Err(HashringError::Config("shuffle sharding is not supported".into()));
        }
    }
    Ok(cfg)
}

/// Thanos's series hash: XXH64 over `tenant 0xff (name 0xff value 0xff)*`, labels in
/// the order given.
pub fn series_hash<'a>(tenant: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = Xxh64::new(0);
    h.update(tenant.as_bytes());
    h.update(&[SEP]);
    for (n, v) in labels {
        h.update(n.as_bytes());
        h.update(&[SEP]);
        h.update(v.as_bytes());
        h.update(&[SEP]);
    }
    h.digest()
}

/// A single ring.
#[derive(Debug, Clone)]
pub enum Ring {
    Hashmod(Vec<Endpoint>),
    Ketama(Ketama),
}

/// A ketama ring: sections sorted by hash, each with its precomputed replica endpoints.
#[derive(Debug, Clone)]
pub struct Ketama {
    endpoints: Vec<Endpoint>,
    hashes: Vec<u64>,
    replicas: Vec<Vec<u32>>,
}

impl Ketama {
    /// Builds the ring: `SECTIONS_PER_NODE` sections per endpoint (hash of
    /// `"<address>:<i>"`, i from 1), sorted, each with `rf` distinct replica endpoints
    /// taken walking forward, keeping the zones evenly used.
    pub fn new(endpoints: Vec<Endpoint>, rf: usize) -> Result<Ketama, HashringError> {
        if endpoints.len() < rf {
            return Err(HashringError::Config(format!(
                "ketama: amount of endpoints ({}) needs to be larger than replication factor ({rf})",
                endpoints.len()
            )));
        }
        let mut sections: Vec<(u64, u32)> = Vec::with_capacity(endpoints.len() * SECTIONS_PER_NODE);
        for (i, e) in endpoints.iter().enumerate() {
            for s in 1..=SECTIONS_PER_NODE {
                sections.push((xxh64(format!("{}:{s}", e.address).as_bytes(), 0), i as u32));
            }
        }
        sections.sort_by_key(|s| s.0);
        let zones: Vec<&str> = {
            let mut z: Vec<&str> = endpoints.iter().map(|e| e.az.as_str()).collect();
            z.sort_unstable();
            z.dedup();
            z
        };
        let zone_of: Vec<usize> = endpoints.iter().map(|e| zones.binary_search(&e.az.as_str()).unwrap_or(0)).collect();
        let n = sections.len();
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let mut picked: Vec<u32> = Vec::with_capacity(rf);
            let mut spread = vec![0usize; zones.len()];
            let mut j = i;
            // Bounded: after one lap with the zone rule relaxed nothing new can be found.
            let mut steps = 0usize;
            while picked.len() < rf && steps < 2 * n {
                let ep = sections[j].1;
                j = (j + 1) % n;
                steps += 1;
                if picked.contains(&ep) {
                    continue;
                }
                let z = zone_of[ep as usize];
                let least = spread.iter().copied().min().unwrap_or(0);
                if zones.len() > 1 && spread[z] > 0 && spread[z] > least {
                    continue;
                }
                picked.push(ep);
                spread[z] += 1;
            }
            replicas.push(picked);
        }
        Ok(Ketama { endpoints, hashes: sections.iter().map(|s| s.0).collect(), replicas })
    }

    fn get_n(&self, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        if n >= self.endpoints.len() {
            return Err(HashringError::InsufficientNodes { have: self.endpoints.len(), want: n + 1 });
        }
        let mut i = self.hashes.partition_point(|&h| h < hash);
        if i == self.hashes.len() {
            i = 0;
        }
        let r = self.replicas[i]
            .get(n)
            .ok_or(HashringError::InsufficientNodes { have: self.replicas[i].len(), want: n + 1 })?;
        Ok(&self.endpoints[*r as usize])
    }
}

impl Ring {
    /// Builds a ring of `algorithm` over `endpoints` (file order).
    pub fn new(algorithm: Algorithm, mut endpoints: Vec<Endpoint>, rf: usize) -> Result<Ring, HashringError> {
        match algorithm {
            Algorithm::Hashmod => {
                if endpoints.iter().any(|e| !e.az.is_empty()) {
                    return Err(HashringError::Config(
                        "hashmod algorithm does not support AZ aware hashring configuration; use ketama or remove az"
                            .into(),
                    ));
                }
                endpoints.sort_by(|a, b| a.address.cmp(&b.address));
                Ok(Ring::Hashmod(endpoints))
            }
            Algorithm::Ketama => Ok(Ring::Ketama(Ketama::new(endpoints, rf)?)),
        }
    }

    /// The endpoint holding replica `n` (0-based) of a series with this hash.
    pub fn get_n(&self, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        match self {
            Ring::Hashmod(eps) => {
                if n >= eps.len() {
                    return Err(HashringError::InsufficientNodes { have: eps.len(), want: n + 1 });
                }
                let i = hash.wrapping_add(n as u64) % eps.len() as u64;
                Ok(&eps[i as usize])
            }
            Ring::Ketama(k) => k.get_n(hash, n),
        }
    }

    /// The ring's endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        match self {
            Ring::Hashmod(e) => e,
            Ring::Ketama(k) => &k.endpoints,
        }
    }
}

#[derive(Debug, Clone)]
enum TenantSet {
    All,
    Tenants { exact: HashSet<String>, globs: Vec<String> },
}

impl TenantSet {
    fn matches(&self, tenant: &str) -> bool {
        match self {
            TenantSet::All => true,
            TenantSet::Tenants { exact, globs } => {
                exact.contains(tenant) || globs.iter().any(|g| glob_match(g, tenant))
            }
        }
    }
}

/// Several rings; a tenant uses the first whose tenant list matches it (an entry without
/// tenants matches everyone).
#[derive(Debug)]
pub struct MultiRing {
    rings: Vec<(TenantSet, Ring, BTreeMap<String, String>)>,
    cache: RwLock<HashMap<String, usize>>,
}

impl MultiRing {
    /// Builds the rings of a parsed file; `default_algorithm` applies where an entry
    /// names none (an unknown name falls back to hashmod, as in Thanos).
    pub fn new(cfg: &[HashringConfig], default_algorithm: Algorithm, rf: usize) -> Result<MultiRing, HashringError> {
        let mut rings = Vec::new();
        for h in cfg {
            let algo = match h.algorithm.as_deref() {
                None | Some("") => default_algorithm,
                Some("ketama") => Algorithm::Ketama,
                Some(_) => Algorithm::Hashmod,
            };
            let ring = Ring::new(algo, h.endpoints(), rf)?;
            let set = if h.tenants.is_empty() {
                TenantSet::All
            } else if h.tenant_matcher_type == "glob" {
                TenantSet::Tenants { exact: HashSet::new(), globs: h.tenants.clone() }
            } else if h.tenant_matcher_type.is_empty() || h.tenant_matcher_type == "exact" {
                TenantSet::Tenants { exact: h.tenants.iter().cloned().collect(), globs: Vec::new() }
            } else {
                return Err(HashringError::Config(format!("unknown tenant_matcher_type {:?}", h.tenant_matcher_type)));
            };
            rings.push((set, ring, h.external_labels.clone()));
        }
        Ok(MultiRing { rings, cache: RwLock::new(HashMap::new()) })
    }

    /// A single-node ring of `local`, used when no hashring is configured.
    pub fn single(local: &str) -> MultiRing {
        let ring = Ring::Hashmod(vec![Endpoint { address: local.to_string(), az: String::new() }]);
        MultiRing { rings: vec![(TenantSet::All, ring, BTreeMap::new())], cache: RwLock::new(HashMap::new()) }
    }

    fn ring_index(&self, tenant: &str) -> Result<usize, HashringError> {
        if let Some(&i) = self.cache.read().get(tenant) {
            return Ok(i);
        }
        let i = self
            .rings
            .iter()
            .position(|(s, _, _)| s.matches(tenant))
            .ok_or_else(|| HashringError::NoMatchingRing(tenant.to_string()))?;
        self.cache.write().insert(tenant.to_string(), i);
        Ok(i)
    }

    /// The endpoint for replica `n` of a series of `tenant` with Thanos hash `hash`.
    pub fn get_n(&self, tenant: &str, hash: u64, n: usize) -> Result<&Endpoint, HashringError> {
        let i = self.ring_index(tenant)?;
        self.rings[i].1.get_n(hash, n)
    }

    /// External labels configured for the tenant's ring, if it lists tenants.
    pub fn external_labels(&self, tenant: &str) -> BTreeMap<String, String> {
        match self.ring_index(tenant) {
            Ok(i) if !matches!(self.rings[i].0, TenantSet::All) => self.rings[i].2.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// All endpoints of all rings (deduplicated, sorted).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self.rings.iter().flat_map(|r| r.1.endpoints().iter().cloned()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Go's `path/filepath.Match` on `/`-free names: `*` any run, `?` one character,
/// `[...]` a class (`^` negates, ranges `a-z`), `\` escapes. A malformed pattern
/// matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n).unwrap_or(false)
}

fn glob_at(p: &[char], n: &[char]) -> Option<bool> {
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() && n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' if ni < n.len() => {
                    let (ok, len) = class_match(&p[pi..], n[ni])?;
                    if ok {
                        pi += len;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if ni < n.len() => {
                    let c = *p.get(pi + 1)?;
                    if c == n[ni] {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c if ni < n.len() && c != '?' && c != '[' && c != '\\' && c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return Some(true);
        }
        // Mismatch: let the last star swallow one more character.
        match star {
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => return Some(false),
        }
    }
}

/// Matches `c` against the class at the start of `p` (`[...]`); returns whether it
/// matched and the class's length in pattern characters.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = if ch == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            ch
        };
        i += 1;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&x| x != ']') {
            hi = if p[i + 1] == '\\' { *p.get(i + 2)? } else { p[i + 1] };
            i += if p[i + 1] == '\\' { 3 } else { 2 };
        }
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    Some((matched != negate, i))
}

#[cfg(test)]
mod tests;
