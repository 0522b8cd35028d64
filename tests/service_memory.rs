//! The service suite (`tests/suite/service.rs`) over the in-process store.

use std::sync::Arc;

/// A fresh, empty store for one test.
async fn test_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::default())
}

include!("suite/service.rs");
