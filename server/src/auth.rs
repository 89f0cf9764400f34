//! Credentials: node password hashes, the admin token, and open client sessions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tandem_proto::ServerGuid;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::ServerError;
use crate::model::now_ns;

/// Hashes a password with argon2id and a random salt (PHC string).
///
/// # Errors
/// [`ServerError::InvalidArgument`] if argon2 rejects the input.
pub fn hash_password(password: &str) -> Result<String, ServerError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ServerError::InvalidArgument(format!("cannot salt password: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::InvalidArgument(format!("cannot hash password: {e}")))
}

/// Hashes a random key the software made itself (a local vault's node
/// key) with argon2id at its smallest cost. Stretching protects passwords
/// people choose; a 256-bit random key cannot be guessed whatever the cost,
/// and the default cost (19 MiB, two passes) added ~25 ms to every command
/// that opens a vault. The cost is recorded in the hash, so the usual
/// verification applies it.
///
/// # Errors
/// [`ServerError::InvalidArgument`] if argon2 rejects the input.
pub fn hash_random_key(key: &str) -> Result<String, ServerError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| ServerError::InvalidArgument(format!("cannot salt key: {e}")))?;
    let cheapest = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None)
        .map_err(|e| ServerError::InvalidArgument(format!("argon2 parameters: {e}")))?;
    Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        cheapest,
    )
    .hash_password(key.as_bytes(), &salt)
    .map(|h| h.to_string())
    .map_err(|e| ServerError::InvalidArgument(format!("cannot hash key: {e}")))
}

/// Whether `hash` was made by [`hash_random_key`]'s cost (argon2id at its
/// smallest memory, one pass, one lane); vaults made before that cost
/// carry the default one and are re-hashed when next opened.
pub fn is_random_key_cost(hash: &str) -> bool {
    PasswordHash::new(hash)
        .ok()
        .and_then(|parsed| argon2::Params::try_from(&parsed).ok())
        .is_some_and(|p| {
            p.m_cost() == argon2::Params::MIN_M_COST && p.t_cost() == 1 && p.p_cost() == 1
        })
}

/// Password checks that may run at once. Each argon2 verification holds
/// 19 MiB; unbounded, a flood of wrong passwords ran the server to GiBs.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 4;

/// How long a logon waits for a verification slot before it is turned away.
pub const VERIFICATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A hash nobody knows the password of. Verified for unknown node names so
/// that they take as long as known ones and cannot be told apart by time.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let secret: [u8; 32] = rand::random();
        hash_password(&hex::encode(secret)).unwrap_or_default()
    })
}

/// The most argon2 memory one stored hash may ask for (64 MiB). A replica's
/// hash comes from a partner server; a larger one is refused, not computed.
const MAX_HASH_MEMORY_KIB: u32 = 64 * 1024;

/// The most argon2 work (KiB of memory times passes) one stored hash may ask
/// for: five times the default cost (19 MiB, two passes). A partner's hash
/// asking for billions of passes held a verification slot, and the thread
/// under it, for good: four such logons turned every other logon away.
const MAX_HASH_WORK: u64 = 5 * 19 * 1024 * 2;

/// The most lanes one stored hash may ask for; the default is one.
const MAX_HASH_LANES: u32 = 16;

/// Why a stored argon2 hash costs more than this server will compute, or
/// `None` when it is within the bounds (an unparsable hash is no concern of
/// this check: it never matches).
pub fn hash_cost_refused(hash: &str) -> Option<String> {
    let params = PasswordHash::new(hash)
        .ok()
        .and_then(|parsed| argon2::Params::try_from(&parsed).ok())?;
    let work = u64::from(params.m_cost()) * u64::from(params.t_cost());
    if params.m_cost() > MAX_HASH_MEMORY_KIB {
        Some(format!(
            "the password hash asks for {} KiB of memory, more than the {MAX_HASH_MEMORY_KIB} KiB this server computes",
            params.m_cost()
        ))
    } else if work > MAX_HASH_WORK {
        Some(format!(
            "the password hash asks for {} passes over {} KiB, more work than this server computes ({MAX_HASH_WORK} KiB-passes)",
            params.t_cost(),
            params.m_cost()
        ))
    } else if params.p_cost() > MAX_HASH_LANES {
        Some(format!(
            "the password hash asks for {} lanes, more than the {MAX_HASH_LANES} this server computes",
            params.p_cost()
        ))
    } else {
        None
    }
}

/// Argon2 working memory kept between verifications, one buffer per slot of
/// [`MAX_CONCURRENT_VERIFICATIONS`]: a fresh 19 MiB per check was kept by
/// the allocator in every arena it touched (hundreds of MiB under a flood).
#[derive(Debug, Default)]
pub struct VerifyMemory {
    buffers: Mutex<Vec<Vec<argon2::Block>>>,
}

impl VerifyMemory {
    fn take(&self, blocks: usize) -> Vec<argon2::Block> {
        let mut buffer = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buffer.resize(blocks, argon2::Block::default());
        buffer
    }

    fn give_back(&self, buffer: Vec<argon2::Block>) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if buffers.len() < MAX_CONCURRENT_VERIFICATIONS {
            buffers.push(buffer);
        }
    }
}

/// Whether `password` matches the stored PHC `hash`, computed in memory
/// from `memory`. Hashes costing more than [`hash_cost_refused`] allows
/// never match.
pub fn verify_password_in(memory: &VerifyMemory, password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(params), Some(expected), Some(salt)) =
        (argon2::Params::try_from(&parsed), parsed.hash, parsed.salt)
    else {
        return false;
    };
    if hash_cost_refused(hash).is_some() {
        return false;
    }
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut buffer = memory.take(blocks);
    let mut out = vec![0u8; expected.len()];
    let computed = argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut buffer[..])
        .is_ok();
    memory.give_back(buffer);
    // Every byte is compared, whatever the first difference.
    let difference = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    computed && difference == 0
}

/// Whether `password` matches the stored PHC `hash` (a local vault's key
/// hash, read from the vault's directory: within the same cost bounds).
pub fn verify_password(password: &str, hash: &str) -> bool {
    if hash_cost_refused(hash).is_some() {
        return false;
    }
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks a proposed node password: 8–256 characters, as TSM's default minimum.
///
/// # Errors
/// [`ServerError::InvalidArgument`] naming the rule that failed.
pub fn check_password_rules(password: &str) -> Result<(), ServerError> {
    let len = password.chars().count();
    if len < 8 {
        return Err(ServerError::InvalidArgument(format!(
            "password is too short ({len} characters); use at least 8"
        )));
    }
    if len > 256 {
        return Err(ServerError::InvalidArgument(
            "password is longer than 256 characters".into(),
        ));
    }
    Ok(())
}

/// Proof that a server knows the shared server password, answering a nonce:
/// keyed BLAKE3 (key = BLAKE3 of the password) over the nonce and the
/// answering server's GUID. Lets the source authenticate the target too.
pub fn server_proof(password: &str, nonce: &[u8], guid: ServerGuid) -> [u8; 32] {
    let key = blake3::hash(password.as_bytes());
    let mut hasher = blake3::Hasher::new_keyed(key.as_bytes());
    hasher.update(nonce);
    hasher.update(guid.to_string().as_bytes());
    *hasher.finalize().as_bytes()
}

/// A secret bearer token, printed as `***` in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// 32 random bytes as hex.
    pub fn random() -> Self {
        Token(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// Wraps a token read from a file.
    pub fn new(text: &str) -> Self {
        Token(text.trim().to_string())
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the texts differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let a = self.0.as_bytes();
        let b = candidate.as_bytes();
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// An open client session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Session number.
    pub id: u64,
    /// Node row id.
    pub node_id: i64,
    /// Node name.
    pub node: String,
    /// Client address.
    pub peer: String,
    /// Logon time.
    pub started_ns: i64,
    /// Time of the last call.
    pub last_call_ns: i64,
    /// Chunk bytes received.
    pub bytes_received: u64,
    /// Chunk bytes sent.
    pub bytes_sent: u64,
    /// The node is a replica here: the session is read-only.
    pub replica: bool,
    /// Who logged on: a node, or a partner server replicating to us.
    pub kind: SessionKind,
}

/// The two kinds of session. A token of one kind is refused by the service
/// of the other, so a replication session never reads or writes as a node
/// and a node's session never reaches the Replication service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// A node logged on to the Backup service.
    Node,
    /// A partner server, by name, in the Replication service.
    Replication(String),
}

/// Open sessions one node (or partner server) may have; a logon beyond it
/// ends the node's least recently used session.
pub const MAX_SESSIONS_PER_NODE: usize = 32;

/// Sessions idle longer than this are forgotten (the client logs on again).
pub const SESSION_IDLE_NS: i64 = 2 * 3600 * 1_000_000_000;

/// Open sessions by token. Sessions live in memory: a restarted server forgets
/// them and clients log on again, as with TSM.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    by_token: Mutex<HashMap<String, Session>>,
    /// Tokens of sessions an administrator cancelled, with their numbers,
    /// so the caller is told why its next call fails (at most
    /// [`CANCELLED_REMEMBERED`]; the oldest are forgotten first).
    cancelled: Mutex<std::collections::VecDeque<(String, u64)>>,
    /// Chunk bytes moved by every session since the server started.
    totals: ByteTotals,
}

/// Chunk bytes moved since start, by session kind, for the metrics
/// endpoint (counters: they only grow).
#[derive(Debug, Default)]
struct ByteTotals {
    node_received: AtomicU64,
    node_sent: AtomicU64,
    replication_received: AtomicU64,
    replication_sent: AtomicU64,
}

/// What sessions did since the server started, and what is open now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionTotals {
    /// Sessions opened (node and replication).
    pub opened: u64,
    /// Node sessions open now.
    pub open_node: u64,
    /// Replication sessions open now.
    pub open_replication: u64,
    /// Chunk bytes nodes sent (backups, archives).
    pub node_received: u64,
    /// Chunk bytes sent to nodes (restores, retrieves).
    pub node_sent: u64,
    /// Chunk bytes partner servers sent (replication into this server).
    pub replication_received: u64,
    /// Chunk bytes sent to partner servers.
    pub replication_sent: u64,
}

/// How many cancelled sessions are remembered to explain the refusal.
const CANCELLED_REMEMBERED: usize = 256;

impl Sessions {
    /// Opens a session and returns its token and number.
    pub fn open(&self, node_id: i64, node: &str, peer: &str, replica: bool) -> (Token, u64) {
        self.open_kind(node_id, node, peer, replica, SessionKind::Node)
    }

    /// Opens a replication session for partner server `source`.
    pub fn open_replication(&self, source: &str, peer: &str) -> (Token, u64) {
        self.open_kind(
            0,
            &format!("server {source}"),
            peer,
            false,
            SessionKind::Replication(source.to_string()),
        )
    }

    fn open_kind(
        &self,
        node_id: i64,
        node: &str,
        peer: &str,
        replica: bool,
        kind: SessionKind,
    ) -> (Token, u64) {
        let token = Token::random();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ns();
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| now - s.last_call_ns < SESSION_IDLE_NS);
        // A node (or partner) keeps at most MAX_SESSIONS_PER_NODE sessions:
        // beyond that its least recently used one is forgotten, so repeated
        // logons cannot grow the table, and a client that was killed without
        // logging off never locks its node out.
        let mine: Vec<(String, i64)> = map
            .iter()
            .filter(|(_, s)| s.node == node && s.kind == kind)
            .map(|(t, s)| (t.clone(), s.last_call_ns))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_NODE
            && let Some((oldest, _)) = mine.into_iter().min_by_key(|(_, last)| *last)
        {
            map.remove(&oldest);
        }
        map.insert(
            token.expose().to_string(),
            Session {
                id,
                node_id,
                node: node.to_string(),
                peer: peer.to_string(),
                started_ns: now,
                last_call_ns: now,
                bytes_received: 0,
                bytes_sent: 0,
                replica,
                kind,
            },
        );
        (token, id)
    }

    /// The session of `token`, refreshing its last-call time.
    ///
    /// # Errors
    /// [`ServerError::Unauthenticated`] for an unknown or expired token.
    pub fn touch(&self, token: &str) -> Result<Session, ServerError> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ns();
        match map.get_mut(token) {
            Some(s) if now - s.last_call_ns < SESSION_IDLE_NS => {
                s.last_call_ns = now;
                Ok(s.clone())
            }
            _ => Err(ServerError::Unauthenticated(self.why_closed(token))),
        }
    }

    /// Why `token` names no session: cancelled, or unknown or expired.
    fn why_closed(&self, token: &str) -> String {
        let cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        match cancelled.iter().find(|(t, _)| t == token) {
            Some((_, id)) => {
                format!(
                    "session {id} was cancelled by an administrator; log on again (run the command again) if the work is still wanted"
                )
            }
            None => "session unknown or expired; log on again".into(),
        }
    }

    /// Closes session number `id` for an administrator (CANCEL SESSION),
    /// returning it; its token's next use is refused naming the cancel.
    pub fn cancel(&self, id: u64) -> Option<Session> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        let token = map
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(t, _)| t.clone())?;
        let session = map.remove(&token)?;
        // Recorded before `by_token` is let go (the order every path takes),
        // so no call in between is told "unknown" instead of "cancelled".
        let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        if cancelled.len() >= CANCELLED_REMEMBERED {
            cancelled.pop_front();
        }
        cancelled.push_back((token, id));
        Some(session)
    }

    /// Whether `token` names an open session (of any kind), without
    /// counting as a call.
    pub fn is_open(&self, token: &str) -> bool {
        let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token)
            .is_some_and(|s| now_ns() - s.last_call_ns < SESSION_IDLE_NS)
    }

    /// Whether `token`'s session is still open, without counting as a call:
    /// a long transfer checks it between parts, so a cancel stops it.
    ///
    /// # Errors
    /// [`ServerError::Unauthenticated`] saying why it is not.
    pub fn check_open(&self, token: &str) -> Result<(), ServerError> {
        if self.is_open(token) {
            Ok(())
        } else {
            Err(ServerError::Unauthenticated(self.why_closed(token)))
        }
    }

    /// The node session of `token`; a replication session's token is refused.
    ///
    /// # Errors
    /// [`ServerError::Unauthenticated`].
    pub fn touch_node(&self, token: &str) -> Result<Session, ServerError> {
        let session = self.touch(token)?;
        match session.kind {
            SessionKind::Node => Ok(session),
            SessionKind::Replication(_) => Err(ServerError::Unauthenticated(
                "a replication session is not valid on the Backup service; log on as a node".into(),
            )),
        }
    }

    /// The replication session of `token`, opened by partner `source`.
    ///
    /// # Errors
    /// [`ServerError::Unauthenticated`] for a node's token or another server's.
    pub fn touch_replication(&self, token: &str, source: &str) -> Result<Session, ServerError> {
        let session = self.touch(token)?;
        match &session.kind {
            SessionKind::Replication(owner) if owner == source => Ok(session),
            SessionKind::Replication(owner) => Err(ServerError::Unauthenticated(format!(
                "this replication session belongs to server {owner}, not {source}"
            ))),
            SessionKind::Node => Err(ServerError::Unauthenticated(
                "a node session is not valid on the Replication service; call Hello first".into(),
            )),
        }
    }

    /// Adds transferred bytes to a session's counters.
    pub fn count_bytes(&self, token: &str, received: u64, sent: u64) {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(token) {
            s.bytes_received += received;
            s.bytes_sent += sent;
            let (into, out) = match s.kind {
                SessionKind::Node => (&self.totals.node_received, &self.totals.node_sent),
                SessionKind::Replication(_) => (
                    &self.totals.replication_received,
                    &self.totals.replication_sent,
                ),
            };
            into.fetch_add(received, Ordering::Relaxed);
            out.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// Sessions opened and bytes moved since start, and sessions open now.
    pub fn totals(&self) -> SessionTotals {
        let (open_node, open_replication) = {
            let map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_ns();
            map.values()
                .filter(|s| now - s.last_call_ns < SESSION_IDLE_NS)
                .fold((0, 0), |(n, r), s| match s.kind {
                    SessionKind::Node => (n + 1, r),
                    SessionKind::Replication(_) => (n, r + 1),
                })
        };
        let t = &self.totals;
        SessionTotals {
            opened: self.next_id.load(Ordering::Relaxed),
            open_node,
            open_replication,
            node_received: t.node_received.load(Ordering::Relaxed),
            node_sent: t.node_sent.load(Ordering::Relaxed),
            replication_received: t.replication_received.load(Ordering::Relaxed),
            replication_sent: t.replication_sent.load(Ordering::Relaxed),
        }
    }

    /// Closes every session of node `name` (it was removed); returns their
    /// numbers, so their pins can go too.
    pub fn close_node(&self, name: &str) -> Vec<u64> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        map.retain(|_, s| {
            let theirs = s.kind == SessionKind::Node && s.node == name;
            if theirs {
                closed.push(s.id);
            }
            !theirs
        });
        closed
    }

    /// Closes every replication session of partner `source` (its definition
    /// was deleted); returns their numbers, so their pins can go too.
    pub fn close_replication(&self, source: &str) -> Vec<u64> {
        let mut map = self.by_token.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        map.retain(|_, s| {
            let theirs = matches!(&s.kind, SessionKind::Replication(owner) if owner == source);
            if theirs {
                closed.push(s.id);
            }
            !theirs
        });
        closed
    }

    /// Closes a session, returning it.
    pub fn close(&self, token: &str) -> Option<Session> {
        self.by_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token)
    }

    /// All open sessions, by number.
    pub fn list(&self) -> Vec<Session> {
        let mut all: Vec<Session> = self
            .by_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::Params;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn pooled_verification_agrees_with_the_library() {
        let memory = VerifyMemory::default();
        let hash = hash_password("correct horse").unwrap();
        for _ in 0..2 {
            assert!(verify_password_in(&memory, "correct horse", &hash));
            assert!(!verify_password_in(&memory, "wrong horse", &hash));
        }
        assert!(!verify_password_in(&memory, "x", "not a hash"));
        let greedy = hash.replace("m=19456", "m=4194304");
        assert!(!verify_password_in(&memory, "correct horse", &greedy));
    }

    #[test]
    fn a_hash_asking_for_endless_passes_or_lanes_is_refused_not_computed() {
        // A partner server or a vault directory supplies such hashes. These
        // would run for hours; refused, they return at once.
        let memory = VerifyMemory::default();
        let hash = hash_password("correct horse").unwrap();
        assert_eq!(hash_cost_refused(&hash), None);
        let endless = hash.replace("t=2", "t=4294967295");
        let lanes = hash.replace("p=1", "p=255");
        let heavy = hash.replace("m=19456,t=2", "m=65536,t=4");
        for refused in [&endless, &lanes, &heavy] {
            assert_ne!(refused, &hash);
            let why = hash_cost_refused(refused).unwrap();
            assert!(why.contains("more"), "{why}");
            assert!(!verify_password_in(&memory, "correct horse", refused));
            assert!(!verify_password("correct horse", refused));
        }
        // Within the bound: a partner's hash at a higher cost still works.
        let dearer = hash_with(Params::new(19456, 4, 4, None).unwrap(), "correct horse");
        assert_eq!(hash_cost_refused(&dearer), None);
        assert!(verify_password_in(&memory, "correct horse", &dearer));
        assert_eq!(hash_cost_refused("not a hash"), None);
    }

    fn hash_with(params: Params, password: &str) -> String {
        let salt = SaltString::encode_b64(&[3u8; 16]).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_random_key_hash_is_cheap_and_verifies_only_that_key() {
        let memory = VerifyMemory::default();
        let key = hex::encode([7u8; 32]);
        let hash = hash_random_key(&key).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert!(verify_password_in(&memory, &key, &hash));
        assert!(!verify_password_in(&memory, &hex::encode([8u8; 32]), &hash));
        assert!(verify_password(&key, &hash));
        assert!(is_random_key_cost(&hash));
        assert!(!is_random_key_cost(&hash_password(&key).unwrap()));
        assert!(!is_random_key_cost("not a hash"));
    }

    #[test]
    fn token_comparison_and_debug() {
        let t = Token::new("abc\n");
        assert!(t.matches("abc"));
        assert!(!t.matches("abd"));
        assert!(!t.matches("ab"));
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn a_token_works_only_on_its_own_kind_of_service() {
        let sessions = Sessions::default();
        let (node, _) = sessions.open(1, "ALICE", "-", false);
        let (repl, _) = sessions.open_replication("PRIMARY", "-");
        assert!(sessions.touch_node(node.expose()).is_ok());
        assert!(sessions.touch_node(repl.expose()).is_err());
        assert!(sessions.touch_replication(repl.expose(), "PRIMARY").is_ok());
        assert!(sessions.touch_replication(repl.expose(), "OTHER").is_err());
        assert!(
            sessions
                .touch_replication(node.expose(), "PRIMARY")
                .is_err()
        );
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(check_password_rules("short").is_err());
        assert!(check_password_rules("long enough").is_ok());
    }
}
