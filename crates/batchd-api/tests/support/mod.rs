//! What the HTTP tests share: the state `batchd serve` keeps under its data dir, and the
//! router served on 127.0.0.1.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::Path;
use std::sync::Arc;

use batchd_storage::{Storage, StorageConfig};
use batchd_store::{SharedStore, SqliteStore};

/// Local storage under `dir` (its buckets too) and a SQLite store in it.
pub async fn local_state(dir: &Path) -> (Arc<Storage>, SharedStore) {
    let storage = Arc::new(Storage::new(StorageConfig {
        data_dir: dir.into(),
        ..Default::default()
    }));
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.join("batchd.sqlite")).await.unwrap());
    (storage, store)
}

/// Serves `app` on 127.0.0.1 at a port the OS picks; returns `http://ADDR`.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
