//! Identifiers shared by clients and servers.

use std::fmt;
use std::str::FromStr;

/// A malformed identifier received from a peer or typed by a user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The byte string has the wrong length for this kind of id.
    #[error("{kind} must be {expected} bytes, got {actual}")]
    Length {
        /// Which id.
        kind: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The text form could not be parsed.
    #[error("invalid {kind} {text:?}: {reason}")]
    Text {
        /// Which id.
        kind: &'static str,
        /// The offending text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn fixed<const N: usize>(kind: &'static str, bytes: &[u8]) -> Result<[u8; N], IdError> {
    bytes.try_into().map_err(|_| IdError::Length {
        kind,
        expected: N,
        actual: bytes.len(),
    })
}

/// Content address of a chunk: the BLAKE3 hash of its uncompressed data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` to its chunk id.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Parses the 32 raw bytes used on the wire and in the catalog.
    ///
    /// # Errors
    /// [`IdError::Length`] when `bytes` is not 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        fixed("chunk id", bytes).map(ChunkId)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The raw bytes as a slice (for SQL parameters and wire messages).
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..16])
    }
}

/// Identity of one stored object version, the same on every server that holds
/// it, so replication can compare inventories without comparing contents.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// A fresh id: the time now in nanoseconds since the epoch (8 bytes,
    /// big-endian), then 8 random bytes. Ids made later sort after earlier
    /// ones, so the catalog's unique index on them grows at its end; with
    /// wholly random ids each new version landed on a random page of an
    /// index of millions, and that page had to be read, dirtied and written
    /// again. 64 random bits keep ids made in the same nanosecond (or on two
    /// servers) apart.
    pub fn fresh() -> Self {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&now_ns.to_be_bytes());
        id[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        ObjectId(id)
    }

    /// Parses the 16 raw bytes.
    ///
    /// # Errors
    /// [`IdError::Length`] when `bytes` is not 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        fixed("object id", bytes).map(ObjectId)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A server's replication GUID: 16 random bytes made at first start that never
/// change, shown as dotted lower-case hex (`91.0f.ef.…`) as TSM's REPLSERVERGUID.
/// Clients compare it before trusting a failover server.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerGuid(pub [u8; 16]);

impl ServerGuid {
    /// A fresh random GUID.
    pub fn random() -> Self {
        ServerGuid(rand::random())
    }
}

impl fmt::Display for ServerGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ServerGuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerGuid({self})")
    }
}

impl FromStr for ServerGuid {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, IdError> {
        let bad = |reason| IdError::Text {
            kind: "server guid",
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.trim().split('.').collect();
        if parts.len() != 16 {
            return Err(bad("expected 16 dot-separated hex bytes"));
        }
        let mut out = [0u8; 16];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(bad("each byte is two hex digits"));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        Ok(ServerGuid(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_object_ids_lead_with_the_time_they_were_made_and_differ() {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        };
        let before = now();
        let mut ids: Vec<ObjectId> = (0..1000).map(|_| ObjectId::fresh()).collect();
        let after = now();
        for id in &ids {
            let made = u64::from_be_bytes(id.0[..8].try_into().unwrap());
            // Big-endian time first: ids sort by when they were made.
            assert!((before..=after).contains(&made), "{id}");
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn guid_round_trips_through_dotted_hex() {
        let guid = ServerGuid([
            0x91, 0x0f, 0xef, 0x90, 0x5c, 0xcc, 0x11, 0xe1, 0xae, 0x34, 0x08, 0, 0, 0, 0, 2,
        ]);
        let text = guid.to_string();
        assert_eq!(text, "91.0f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.02");
        assert_eq!(text.parse::<ServerGuid>().unwrap(), guid);
    }

    #[test]
    fn malformed_guids_are_rejected() {
        assert!("91.0f".parse::<ServerGuid>().is_err());
        assert!(
            "zz.0f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.02"
                .parse::<ServerGuid>()
                .is_err()
        );
        assert!(
            "910.f.ef.90.5c.cc.11.e1.ae.34.08.00.00.00.00.02"
                .parse::<ServerGuid>()
                .is_err()
        );
    }

    #[test]
    fn chunk_id_needs_32_bytes() {
        assert_eq!(
            ChunkId::from_slice(&[0; 31]),
            Err(IdError::Length {
                kind: "chunk id",
                expected: 32,
                actual: 31
            })
        );
        let id = ChunkId::of(b"hello");
        assert_eq!(ChunkId::from_slice(id.as_bytes()).unwrap(), id);
    }
}
