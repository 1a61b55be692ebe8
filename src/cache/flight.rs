//! Fills in flight: one upstream fetch per key at a time, shared by every request that needs it.
//!
//! Written here rather than taken from moka's `try_get_with`, which coalesces only while a key
//! is absent: a stale entry is present while its refresh runs, and a forced refresh runs beside
//! a fresh entry, and both must still be one fetch per key. Each fill runs as its own task, so
//! it completes and is stored even when the request that started it goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::entry::CacheKey;
use super::{Filled, Unfilled};
use crate::error::GatewayError;

/// What a fill produced, shared by every request that waited for it.
pub type FillResult = Result<Filled, Arc<Unfilled>>;

pub type SharedFill = Shared<BoxFuture<'static, FillResult>>;

/// Whether this request started the fill it waits for.
#[derive(Debug)]
pub enum Joined {
    Led(SharedFill),
    Followed(SharedFill),
}

#[derive(Debug, Clone, Default)]
pub struct Flights {
    inner: Arc<Mutex<HashMap<CacheKey, SharedFill>>>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, SharedFill>> {
        // Each operation is one map call: a poisoned map is still consistent.
        crate::sync::lock(&self.inner)
    }

    /// Joins the fill in flight for `key`, or starts `start()`'s fill (which may refuse, e.g.
    /// when the caller's quota is spent; it is called only when no fill is in flight).
    pub fn join_or_start<E>(
        &self,
        key: &CacheKey,
        start: impl FnOnce() -> Result<BoxFuture<'static, FillResult>, E>,
    ) -> Result<Joined, E> {
        let mut flights = self.lock();
        if let Some(fill) = flights.get(key) {
            return Ok(Joined::Followed(fill.clone()));
        }
        let fill = start()?;
        let landing = Landing {
            flights: self.clone(),
            key: key.clone(),
        };
        let task = tokio::spawn(async move {
            let result = fill.await;
            // The fill has stored its answer; from now on the cache answers this key.
            drop(landing);
            result
        });
        let shared = async move {
            task.await.unwrap_or_else(|_| {
                Err(Arc::new(Unfilled::Failed(GatewayError::Internal(
                    "a cache fill task failed",
                ))))
            })
        }
        .boxed()
        .shared();
        flights.insert(key.clone(), shared.clone());
        Ok(Joined::Led(shared))
    }

    /// Fills in flight (for reports).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests waiting for the fill of `key` (its shared handles, less the map's own).
    pub fn waiting(&self, key: &CacheKey) -> usize {
        self.lock()
            .get(key)
            .and_then(Shared::strong_count)
            .map_or(0, |handles| handles.saturating_sub(1))
    }
}

/// Removes a fill from the map when it ends, however it ends (a panicking fill included).
struct Landing {
    flights: Flights,
    key: CacheKey,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.flights.lock().remove(&self.key);
    }
}
