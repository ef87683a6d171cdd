//! [`ByteView`]: bytes handed to callers without a copy where possible: a
//! view into a page held in memory; a transaction's own buffered writes are
//! copied out of its write buffer (an arena that later writes may move).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::btree::PageSlice;

/// Bytes of a key or value. Borrowed from the page when the page is in
/// memory (no copy); a copy of the transaction's own buffered write
/// otherwise (a reference-counted buffer, cheap to clone).
#[derive(Clone)]
pub struct ByteView {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Page(PageSlice),
    Shared(Arc<[u8]>),
}

impl ByteView {
    pub(crate) fn from_page(slice: PageSlice) -> Self {
        ByteView {
            repr: Repr::Page(slice),
        }
    }

    pub(crate) fn shared(bytes: Arc<[u8]>) -> Self {
        ByteView {
            repr: Repr::Shared(bytes),
        }
    }

    /// The bytes as an owned vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.deref().to_vec()
    }

    /// Whether the bytes are a view into a page (no copy was made).
    pub fn is_page_view(&self) -> bool {
        matches!(&self.repr, Repr::Page(slice) if slice.is_borrowed())
    }
}

impl Deref for ByteView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Page(slice) => slice,
            Repr::Shared(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for ByteView {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for ByteView {
    fn eq(&self, other: &Self) -> bool {
        self.deref() == other.deref()
    }
}

impl Eq for ByteView {}

impl PartialEq<[u8]> for ByteView {
    fn eq(&self, other: &[u8]) -> bool {
        self.deref() == other
    }
}

impl PartialEq<&[u8]> for ByteView {
    fn eq(&self, other: &&[u8]) -> bool {
        self.deref() == *other
    }
}

impl fmt::Debug for ByteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByteView({} bytes)", self.len())
    }
}
