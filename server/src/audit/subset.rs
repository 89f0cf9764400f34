//! Which chunks an audit reads, when not all (restic's
//! `--read-data-subset`): a share picked afresh each run, so repeated runs
//! cover everything in time, or a fixed slice, so that `1/7` … `7/7` on
//! seven nights read every chunk exactly once.

use tandem_proto::ChunkId;

/// The most slices a pool can be cut into.
pub(super) const MAX_SLICES: u32 = 10_000;

/// Which chunks an audit reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSubset {
    /// Every chunk.
    All,
    /// About `per_million` in a million chunks, chosen by `salt` (a new
    /// one per run).
    Share {
        /// Chunks read per million.
        per_million: u32,
        /// Picks which ones.
        salt: u64,
    },
    /// Slice `n` of `t` (1-based): the same chunks every time.
    Slice {
        /// Which slice.
        n: u32,
        /// How many slices.
        t: u32,
    },
}

impl ReadSubset {
    /// Parses `all` (or nothing), `P%` (0 < P <= 100, decimals allowed) or
    /// `n/t` (1 <= n <= t <= 10000).
    ///
    /// # Errors
    /// A text that is none of these, with what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!(
                "--read-data-subset {text:?}: {why}; give a share such as 10% (more than 0, at most 100), \
                 a slice such as 1/7 (slice 1 to 7 of 7, at most {MAX_SLICES} slices), or all"
            )
        };
        if text.is_empty() || text.eq_ignore_ascii_case("all") {
            return Ok(ReadSubset::All);
        }
        if let Some(number) = text.strip_suffix('%') {
            let share: f64 = number
                .trim()
                .parse()
                .map_err(|_| bad("the share is not a number"))?;
            if !share.is_finite() || share <= 0.0 || share > 100.0 {
                return Err(bad("the share is out of range"));
            }
            // A share rounds to whole chunks per million, at least one.
            let per_million = ((share * 10_000.0).round() as u32).clamp(1, 1_000_000);
            if per_million == 1_000_000 {
                return Ok(ReadSubset::All);
            }
            return Ok(ReadSubset::Share {
                per_million,
                salt: rand::random(),
            });
        }
        if let Some((n, t)) = text.split_once('/') {
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| bad("the slice is not a number"))?;
            let t: u32 = t
                .trim()
                .parse()
                .map_err(|_| bad("the slice count is not a number"))?;
            if t == 0 || t > MAX_SLICES || n == 0 || n > t {
                return Err(bad("the slice is out of range"));
            }
            if t == 1 {
                return Ok(ReadSubset::All);
            }
            return Ok(ReadSubset::Slice { n, t });
        }
        Err(bad("not a share, a slice or all"))
    }

    /// Whether the audit reads chunk `id`. Chunk ids are hashes, so their
    /// first bytes are evenly spread: a share or a slice of them is a fair
    /// sample of the pool's containers and of every node's files.
    pub fn keeps(&self, id: &ChunkId) -> bool {
        let mut first = [0u8; 8];
        first.copy_from_slice(&id.as_slice()[..8]);
        let key = u64::from_le_bytes(first);
        match *self {
            ReadSubset::All => true,
            ReadSubset::Share { per_million, salt } => {
                (key ^ salt) % 1_000_000 < u64::from(per_million)
            }
            ReadSubset::Slice { n, t } => key % u64::from(t) == u64::from(n - 1),
        }
    }

    /// Whether a pool audit reads container `number`. A pool audit samples
    /// whole containers, not chunks: a chunk sample touches nearly every
    /// block of every container (chunks are small, blocks are read whole),
    /// so from a bucket it would cost almost a full read.
    pub fn keeps_container(&self, number: u32) -> bool {
        match *self {
            ReadSubset::All => true,
            ReadSubset::Share { per_million, salt } => {
                container_rank(number, salt) < u64::from(per_million)
            }
            ReadSubset::Slice { n, t } => u64::from(number) % u64::from(t) == u64::from(n - 1),
        }
    }

    /// Of a pool's containers `numbers`, those a pool audit reads
    /// ([`Self::keeps_container`]). A share of a pool with few containers
    /// can pick none (10% of three containers); it then reads the one the
    /// share ranks first, so a sampled audit never reads nothing while
    /// there is data, and runs with new salts still reach every container.
    pub fn containers_of(&self, numbers: &[u32]) -> Vec<u32> {
        let kept: Vec<u32> = numbers
            .iter()
            .copied()
            .filter(|n| self.keeps_container(*n))
            .collect();
        match *self {
            ReadSubset::Share { salt, .. } if kept.is_empty() => numbers
                .iter()
                .copied()
                .min_by_key(|n| container_rank(*n, salt))
                .into_iter()
                .collect(),
            _ => kept,
        }
    }

    /// How it reads in reports: `all`, `10%`, `1/7`.
    pub fn describe(&self) -> String {
        match *self {
            ReadSubset::All => "all".to_string(),
            ReadSubset::Share { per_million, .. } => {
                format!("{}%", f64::from(per_million) / 10_000.0)
            }
            ReadSubset::Slice { n, t } => format!("{n}/{t}"),
        }
    }
}

/// Where container `number` falls in a share drawn with `salt`, 0 to
/// 999,999: a share of P per million reads those below P.
fn container_rank(number: u32, salt: u64) -> u64 {
    // Spread the numbers (consecutive containers hold consecutive backups)
    // before taking a share.
    let key = u64::from(number).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (key ^ salt) % 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_of_a_small_pool_reads_one_container_and_new_salts_reach_them_all() {
        let numbers = [4, 9, 17];
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200u64 {
            // Salts are random in use; these are spread the same way.
            let mut first = [0u8; 8];
            first.copy_from_slice(&blake3::hash(&i.to_le_bytes()).as_bytes()[..8]);
            let salt = u64::from_le_bytes(first);
            let share = ReadSubset::Share {
                per_million: 10_000,
                salt,
            };
            let picked = share.containers_of(&numbers);
            assert!(!picked.is_empty(), "salt {salt}");
            assert!(picked.iter().all(|n| numbers.contains(n)));
            seen.extend(picked);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), numbers);
        assert!(ReadSubset::All.containers_of(&[]).is_empty());
        let slice = ReadSubset::Slice { n: 2, t: 7 };
        assert!(
            slice.containers_of(&numbers).is_empty(),
            "a slice stays exact"
        );
    }

    fn ids(count: u32) -> Vec<ChunkId> {
        (0..count)
            .map(|i| ChunkId::from_slice(blake3::hash(&i.to_le_bytes()).as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn slices_cover_every_chunk_exactly_once() {
        let all = ids(5000);
        let mut seen = vec![0u32; all.len()];
        for n in 1..=7 {
            let slice = ReadSubset::parse(&format!("{n}/7")).unwrap();
            for (i, id) in all.iter().enumerate() {
                if slice.keeps(id) {
                    seen[i] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
    }

    #[test]
    fn container_slices_cover_every_container_exactly_once() {
        for number in 0..1000u32 {
            let takers = (1..=7)
                .filter(|n| ReadSubset::Slice { n: *n, t: 7 }.keeps_container(number))
                .count();
            assert_eq!(takers, 1, "{number}");
        }
        let share = ReadSubset::parse("25%").unwrap();
        let kept = (0..4000u32).filter(|n| share.keeps_container(*n)).count();
        assert!((800..1200).contains(&kept), "{kept}");
    }

    #[test]
    fn a_share_reads_about_that_share() {
        let all = ids(20_000);
        let share = ReadSubset::parse("10%").unwrap();
        let kept = all.iter().filter(|id| share.keeps(id)).count();
        assert!((1600..2400).contains(&kept), "{kept}");
        assert_eq!(share.describe(), "10%");
        assert_eq!(ReadSubset::parse("0.5%").unwrap().describe(), "0.5%");
    }

    #[test]
    fn whole_and_empty_mean_all() {
        for text in ["", "all", "ALL", "100%", "1/1"] {
            assert_eq!(ReadSubset::parse(text).unwrap(), ReadSubset::All, "{text}");
        }
    }

    #[test]
    fn bad_subsets_say_what_is_accepted() {
        for text in [
            "0%", "-5%", "101%", "nan%", "x%", "0/7", "8/7", "1/0", "1/10001", "a/b", "half",
        ] {
            let err = ReadSubset::parse(text).unwrap_err();
            assert!(err.contains(text) && err.contains("1/7"), "{text}: {err}");
        }
    }
}
