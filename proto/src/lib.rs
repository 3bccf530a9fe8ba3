//! The `selfheal.v1` protobuf package: the events on the bus and the gRPC services.
//!
//! Generated at build time from `proto/selfheal/v1/*.proto` by protox + tonic-prost-build.

/// `selfheal.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("selfheal.v1");
}

pub use prost_types::Timestamp;
