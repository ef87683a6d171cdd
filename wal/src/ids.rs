//! Identifier newtypes shared by every layer: [`PageId`] and [`CommitEpoch`].

use std::fmt;

/// Index of a fixed-size page in the data file. Page 0 is the file header.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageId(pub u64);

impl PageId {
    /// The page id as a `u64`.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageId({})", self.0)
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

/// Monotonic number given to each commit. Epoch 0 is the empty database;
/// the first commit gets epoch 1. Deltas are always merged in epoch order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CommitEpoch(pub u64);

impl CommitEpoch {
    /// The epoch of an empty database, before any commit.
    pub const ZERO: CommitEpoch = CommitEpoch(0);

    /// The epoch as a `u64`.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The epoch that follows this one; `None` past `u64::MAX` (only a
    /// damaged file can get there: 2^64 commits would take millennia).
    pub fn checked_next(self) -> Option<CommitEpoch> {
        self.0.checked_add(1).map(CommitEpoch)
    }
}

impl fmt::Debug for CommitEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitEpoch({})", self.0)
    }
}

impl fmt::Display for CommitEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}
