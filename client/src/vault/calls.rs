//! Calls into the vault that a share which stops answering cannot hold up
//! for ever.
//!
//! A vault on a network share can stop answering in the middle of a
//! command: a write, a read or an `fsync` there then blocks its thread
//! until the share comes back, perhaps never. Every way into the vault is
//! bounded by `vault_timeout_seconds`: its opening; the calls below, which
//! go to its store directly (a backup's copy of its data, a sync's store of
//! what it moved); and every call to its in-process service (a restore's
//! reads, a sync's listings and chunk copies, a push), which the service's
//! own guard bounds (`tandem_server::local_vault`), sharing this command's
//! [`Stall`]. A call that overruns is given up (its thread stays blocked;
//! nothing waits for it, and the process waits at most the runtime's
//! shutdown bound, about 10 s, for it at exit), the vault is marked stalled
//! for the rest of the command, and every later call is refused at once:
//! they would only queue behind the locks the blocked call holds. The
//! command goes on with the server; the next command's sync brings the
//! vault what it missed.
//!
//! Only calls whose work is bounded by their size take the limit: a
//! reclamation or a repair of a large vault may rightly take longer, so
//! those use [`VaultCalls::store`] and are skipped once the vault stalled.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::VaultStore;

/// Whether, and why, a vault was given up in this command: one record
/// shared by every clone of the session and by the vault's service, so an
/// overrun anywhere refuses every later call into the vault.
#[derive(Debug, Clone, Default)]
pub struct Stall(Arc<OnceLock<String>>);

impl Stall {
    /// Why the vault was given up, if it was.
    #[must_use]
    pub fn why(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Gives the vault up: it did not answer within `limit` while `doing`
    /// (say what, from the user's side: "reading data for a restore").
    /// Returns the reason the command reports; the first one stays.
    pub fn give_up(&self, limit: Duration, doing: &str) -> String {
        let why = format!(
            "it did not answer within {} s while {doing} (a network share that stopped answering?); it is left out for the rest of this command, and the next command's sync brings it what it missed. Check the share, or raise vault_timeout_seconds if it is merely slow",
            limit.as_secs()
        );
        self.0.get_or_init(|| why).clone()
    }
}

/// A vault's store with the command's limit on each call.
#[derive(Debug, Clone)]
pub struct VaultCalls {
    store: Arc<dyn VaultStore>,
    limit: Duration,
    /// Why the vault was given up, once a call overran.
    stall: Stall,
}

impl VaultCalls {
    /// `store`, each bounded call given `limit`; an overrun is recorded in
    /// `stall` (the one the vault's service shares).
    #[must_use]
    pub fn new(store: Arc<dyn VaultStore>, limit: Duration, stall: Stall) -> Self {
        VaultCalls {
            store,
            limit,
            stall,
        }
    }

    /// The store itself, for work without a time bound (reclamation,
    /// repair). Callers check [`Self::stalled`] first.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn VaultStore> {
        &self.store
    }

    /// Why the vault was given up in this command, if it was.
    #[must_use]
    pub fn stalled(&self) -> Option<&str> {
        self.stall.why()
    }

    /// Runs `call` on a blocking thread and waits at most the limit for it.
    ///
    /// # Errors
    /// The call's own error; the vault's stall, when this call overran or
    /// an earlier one did (then `call` is not run); a call that panicked.
    pub async fn bounded<T, F>(&self, doing: &str, call: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&dyn VaultStore) -> Result<T, String> + Send + 'static,
    {
        if let Some(why) = self.stalled() {
            return Err(why.to_string());
        }
        let store = self.store.clone();
        let running = tokio::task::spawn_blocking(move || call(store.as_ref()));
        match tokio::time::timeout(self.limit, running).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => Err(format!("the vault's task stopped while {doing}: {e}")),
            Err(_) => Err(self.stall.give_up(self.limit, doing)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tandem_proto::{ChunkId, StoredChunk, pb};

    use super::*;
    use crate::vault::{Reclaimed, Repaired};

    /// A store whose every call takes `delay`.
    #[derive(Debug)]
    struct Slow {
        delay: Duration,
    }

    impl VaultStore for Slow {
        fn reclaim(&self) -> Result<Reclaimed, String> {
            Ok(Reclaimed::default())
        }
        fn missing_chunks(&self, _: &[ChunkId]) -> Result<HashSet<ChunkId>, String> {
            std::thread::sleep(self.delay);
            Ok(HashSet::new())
        }
        fn store_own_chunks(&self, chunks: Vec<StoredChunk>) -> Result<u64, String> {
            std::thread::sleep(self.delay);
            Ok(chunks.len() as u64)
        }
        fn repair_chunks(&self, _: Vec<StoredChunk>) -> Result<Repaired, String> {
            Ok(Repaired::default())
        }
        fn store_pulled_versions(&self, _: Vec<pb::ObjectVersion>, _: bool) -> Result<u64, String> {
            Ok(0)
        }
    }

    fn calls(delay_ms: u64, limit_ms: u64) -> VaultCalls {
        VaultCalls::new(
            Arc::new(Slow {
                delay: Duration::from_millis(delay_ms),
            }),
            Duration::from_millis(limit_ms),
            Stall::default(),
        )
    }

    #[tokio::test]
    async fn a_call_within_the_limit_gives_its_answer() {
        let vault = calls(0, 5_000);
        let stored = vault
            .bounded("storing", |s| s.store_own_chunks(Vec::new()))
            .await;
        assert_eq!(stored, Ok(0));
        assert_eq!(vault.stalled(), None);
    }

    #[tokio::test]
    async fn a_call_that_overruns_stalls_the_vault_for_every_clone() {
        let vault = calls(1_000, 50);
        let seen_by_another_part = vault.clone();
        let err = vault
            .bounded("storing this backup's data", |s| {
                s.store_own_chunks(Vec::new())
            })
            .await
            .unwrap_err();
        assert!(
            err.contains("while storing this backup's data")
                && err.contains("vault_timeout_seconds"),
            "{err}"
        );
        assert_eq!(seen_by_another_part.stalled(), Some(err.as_str()));
        // Later calls are refused without running: they would queue behind
        // the blocked one.
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let later = seen_by_another_part
            .bounded("checking", move |s| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                s.missing_chunks(&[])
            })
            .await;
        assert_eq!(later, Err(err));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
