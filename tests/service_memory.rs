//! The service suite (`tests/suite/service.rs`) over the in-process store.

use std::sync::Arc;

/// A fresh, empty store for one test.
async fn test_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::default())
}

include!("suite/service.rs");

/// The gRPC calls of `tests/suite/grpc.rs`, over the same store.
mod grpc {
    use super::*;

    include!("suite/grpc.rs");
}
