//! A job's input split into chunks for instances sharing one store: each chunk is a range of
//! one input file's records, located by byte offset, that one instance at a time holds under
//! a lease and commits with the fencing token its claim was given.

use crate::{Counters, JobId};

/// Where a chunk's records are: `records` non-blank lines of file `file_index` (the job's
/// validated file list), starting at byte `start_offset`, which begins line `first_line`
/// (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub file_index: u64,
    pub start_offset: u64,
    pub first_line: u64,
    pub records: u64,
}

/// Where a chunk is in its life: waiting, held by an instance, or committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Pending,
    Leased,
    Done,
}

impl ChunkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "leased" => Some(Self::Leased),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// A chunk as the store keeps it. `counters` are live while it is leased, final once done
/// (a chunk cut short by a stop is done with fewer records than planned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: u64,
    pub plan: ChunkPlan,
    pub state: ChunkState,
    pub owner: Option<String>,
    pub lease_until_ms: Option<i64>,
    /// Raised by every claim: only the holder of the latest one may renew or commit.
    pub fence: i64,
    pub counters: Counters,
}

impl Chunk {
    /// Held under a lease that has not run out at `now_ms`.
    pub fn is_held(&self, now_ms: i64) -> bool {
        self.state == ChunkState::Leased && self.lease_until_ms.is_some_and(|t| t >= now_ms)
    }
}

/// A claim on one chunk: what to run, and the fencing token every later write must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLease {
    pub job: JobId,
    pub index: u64,
    pub fence: i64,
    pub plan: ChunkPlan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_their_stored_names() {
        for s in [ChunkState::Pending, ChunkState::Leased, ChunkState::Done] {
            assert_eq!(ChunkState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ChunkState::parse("Done"), None);
    }

    #[test]
    fn a_chunk_is_held_only_while_leased_and_unexpired() {
        let mut c = Chunk {
            index: 0,
            plan: ChunkPlan {
                file_index: 0,
                start_offset: 0,
                first_line: 1,
                records: 1,
            },
            state: ChunkState::Leased,
            owner: Some("a".into()),
            lease_until_ms: Some(100),
            fence: 1,
            counters: Counters::default(),
        };
        assert!(c.is_held(100));
        assert!(!c.is_held(101));
        c.state = ChunkState::Done;
        assert!(!c.is_held(50));
    }
}
