//! Which server may write to a bucket prefix.
//!
//! Containers are objects named by their number, and every server numbers
//! its own from 1; two servers given the same bucket and prefix would
//! overwrite and delete each other's containers, silently. So the first
//! server to write there leaves an owner object, `<prefix>tandem-owner.toml`,
//! naming its GUID (which a catalog restored onto a new machine keeps), and
//! a server whose GUID differs refuses to write there at all.

use serde::Deserialize;

/// The owner object's name under the pool's prefix.
pub const OWNER_OBJECT: &str = "tandem-owner.toml";
/// The largest owner object read; anything bigger was not written by us.
pub const MAX_OWNER_BYTES: u64 = 4096;

/// The server a pool belongs to.
/// Unknown keys are ignored: a newer server may record more.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PoolOwner {
    /// The server's GUID: what decides ownership.
    pub guid: String,
    /// The server's name, for messages.
    pub server: String,
    /// When it claimed the prefix (RFC 3339), for messages.
    #[serde(default)]
    pub claimed: String,
}

impl PoolOwner {
    /// The owner record of server `server` with GUID `guid`, claimed now.
    #[must_use]
    pub fn new(guid: &str, server: &str) -> Self {
        PoolOwner {
            guid: guid.to_string(),
            server: server.to_string(),
            claimed: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// Whether `other` is the same server.
    #[must_use]
    pub fn same_server(&self, other: &PoolOwner) -> bool {
        self.guid == other.guid
    }

    /// The owner object's content (`toml_edit` quotes the values, so even
    /// an odd name stays valid TOML).
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut doc = toml_edit::DocumentMut::new();
        doc["guid"] = toml_edit::value(self.guid.as_str());
        doc["server"] = toml_edit::value(self.server.as_str());
        doc["claimed"] = toml_edit::value(self.claimed.as_str());
        format!(
            "# Only the Tandem server with this GUID writes containers under this prefix.\n{doc}"
        )
    }

    /// Reads an owner object's content.
    ///
    /// # Errors
    /// A description of what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize::<PoolOwner>)
            .map_err(|e| e.to_string())
            .and_then(|owner| {
                if owner.guid.trim().is_empty() {
                    Err("it names no guid".to_string())
                } else {
                    Ok(owner)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_record_reads_back_as_written_even_with_odd_characters() {
        let owner = PoolOwner::new("6f1c-guid", "SRV\"1\\\n");
        let back = PoolOwner::parse(&owner.to_toml()).unwrap();
        assert_eq!(back, owner);
        assert!(back.same_server(&PoolOwner::new("6f1c-guid", "RENAMED")));
        assert!(!back.same_server(&PoolOwner::new("other", "SRV1")));
    }

    #[test]
    fn an_owner_object_we_did_not_write_is_refused_with_a_reason() {
        for (text, says) in [
            ("not toml at all = = =", ""),
            ("server = \"A\"\n", "guid"),
            ("guid = \"\"\nserver = \"A\"\n", "no guid"),
        ] {
            let err = PoolOwner::parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
