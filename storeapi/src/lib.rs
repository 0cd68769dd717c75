//! Wire types for Norn's network protocols, generated from our own `.proto` files
//! (written from `shared/spec/`; package names, message names and field numbers are the
//! wire contract with Prometheus and Thanos), plus conversions to `norn-model` types.
//!
//! - [`prometheus`]: remote write 1.0 and remote read.
//! - [`io::prometheus::write::v2`]: remote write 2.0.
//! - [`io::prometheus::client`]: the client data model, for federation in protobuf.
//! - [`thanos`]: StoreAPI (`thanos.Store`), forwarding (`thanos.WriteableStore`) and
//!   [`thanos::info`] (`thanos.info.Info`).
//! - [`prometheus_copy`]: Thanos's copy of the remote-write series types.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Remote write 1.0 / remote read (`package prometheus`).
pub mod prometheus {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Thanos's copy of the Prometheus series types (`package prometheus_copy`).
pub mod prometheus_copy {
    include!(concat!(env!("OUT_DIR"), "/prometheus_copy.rs"));
}

/// Thanos StoreAPI, WriteableStore and labels (`package thanos`).
pub mod thanos {
    include!(concat!(env!("OUT_DIR"), "/thanos.rs"));
    /// The Info service (`package thanos.info`).
    pub mod info {
        include!(concat!(env!("OUT_DIR"), "/thanos.info.rs"));
    }
}

/// `package io.prometheus.write.v2`.
pub mod io {
    pub mod prometheus {
        pub mod write {
            pub mod v2 {
                include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
            }
        }
        /// The client data model (`io.prometheus.client`), for federation in the protobuf
        /// exposition format.
        pub mod client {
            include!(concat!(env!("OUT_DIR"), "/io.prometheus.client.rs"));
        }
    }
}

pub mod chunks;
mod convert;
pub mod external;
pub mod metadata;
pub mod remote_write;

pub use convert::*;
