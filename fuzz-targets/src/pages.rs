//! Target over the engine's page decoding: sealed page trailers (CRC32),
//! B+tree nodes and overflow chains, the meta page and the table catalog,
//! read from in-memory pages that the fuzzer wrote or damaged.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use mmsb_engine::btree::{self, TreeHeader};
use mmsb_engine::fuzz_hooks;
use mmsb_engine::page_file::{seal_page, verify_page, PAGE_TRAILER_LEN};
use mmsb_engine::{CommitEpoch, Error, PageId, PageRead, PageRef, PageWrite, Result};

/// Usable page lengths the input picks from: the B+tree's smallest (deep
/// trees from few bytes) up to a real 4 KiB page's.
const PAGE_LENS_BYTES: [usize; 4] = [256, 512, 1024, 4096 - PAGE_TRAILER_LEN];

/// Most pages a raw page set may have.
const MAX_RAW_PAGES: usize = 64;

/// The model of one table: key → value.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Name of the table a built page set holds.
const TABLE_NAME: &str = "t";

/// Pages in memory, page 0 standing for the file header (never readable).
#[derive(Clone, Debug)]
pub struct MemPages {
    page_len: usize,
    pages: Vec<Vec<u8>>,
}

impl MemPages {
    /// Header page and meta page, zero-filled.
    pub fn new(page_len: usize) -> Self {
        MemPages {
            page_len,
            pages: vec![vec![0; page_len]; 2],
        }
    }

    /// Pages given byte for byte (each cut or zero-padded to `page_len`).
    fn from_raw(page_len: usize, raw: &[Vec<u8>]) -> Self {
        let mut pages = MemPages::new(page_len);
        for bytes in raw.iter().take(MAX_RAW_PAGES) {
            let mut page = bytes.clone();
            page.resize(page_len, 0);
            pages.pages.push(page);
        }
        pages
    }

    fn page_index(&self, id: PageId) -> Result<usize> {
        match usize::try_from(id.get()) {
            Ok(index) if index >= 1 && index < self.pages.len() => Ok(index),
            _ => Err(Error::PageOutOfRange(id)),
        }
    }
}

impl PageRead for MemPages {
    fn page_len(&self) -> usize {
        self.page_len
    }

    fn read_page(&self, id: PageId) -> Result<PageRef> {
        let index = self.page_index(id)?;
        Ok(PageRef::new(Arc::from(self.pages[index].as_slice())))
    }
}

impl PageWrite for MemPages {
    fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        let index = self.page_index(id)?;
        Ok(&mut self.pages[index])
    }

    fn allocate_page(&mut self) -> Result<PageId> {
        self.pages.push(vec![0; self.page_len]);
        Ok(PageId(self.pages.len() as u64 - 1))
    }

    fn free_page(&mut self, id: PageId) -> Result<()> {
        let index = self.page_index(id)?;
        self.pages[index].fill(0);
        Ok(())
    }
}

/// A value: given outright, or one byte repeated (cheap overflow chains).
#[derive(Debug, Arbitrary)]
enum Value {
    Given(Vec<u8>),
    Repeated { byte: u8, len: u16 },
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Given(bytes) => bytes.clone(),
            Value::Repeated { byte, len } => vec![*byte; usize::from(*len % 8192)],
        }
    }
}

/// One operation on a tree.
#[derive(Debug, Arbitrary)]
enum TreeOp {
    Get(Vec<u8>),
    Range {
        low: Option<Vec<u8>>,
        high: Option<Vec<u8>>,
        reverse: bool,
    },
    First,
    Last,
    Check,
    Insert(Vec<u8>, Value),
    Remove(Vec<u8>),
}

/// One damaged byte: page (modulo the page count), offset, XOR mask.
#[derive(Debug, Arbitrary)]
struct Damage {
    page: u16,
    offset: u16,
    mask: u8,
}

/// Input of [`sealed_page_and_btree_node`].
#[derive(Debug, Arbitrary)]
enum PagesInput {
    /// A whole page given raw, verified as page `page_id`.
    SealedRaw {
        page_id: u64,
        big: bool,
        bytes: Vec<u8>,
    },
    /// A page sealed properly, then one byte flipped or the id changed.
    SealedFlip {
        page_id: u64,
        epoch: u64,
        payload: Vec<u8>,
        offset: u16,
        mask: u8,
        id_bit: Option<u8>,
    },
    /// Raw pages read as a tree with the given header.
    RawTree {
        page_len: u8,
        root: u8,
        len: u64,
        height: u8,
        pages: Vec<Vec<u8>>,
        ops: Vec<TreeOp>,
    },
    /// Raw pages read as a database's meta page and catalog.
    RawCatalog { page_len: u8, pages: Vec<Vec<u8>> },
    /// A table built by inserts (with meta page and catalog), then damaged,
    /// then read through the catalog and operated on.
    BuiltTree {
        page_len: u8,
        entries: Vec<(Vec<u8>, Value)>,
        damage: Vec<Damage>,
        ops: Vec<TreeOp>,
    },
}

/// Fuzz target `sealed_page_and_btree_node`: page trailers must accept what
/// `seal_page` wrote and refuse any one-byte change; B+tree reads and
/// writes over raw or damaged pages answer `Ok` or `Corrupted` (never
/// panic, never another error); an undamaged tree agrees with a `BTreeMap`.
pub fn sealed_page_and_btree_node(data: &[u8]) {
    let Ok(input) = PagesInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match input {
        PagesInput::SealedRaw {
            page_id,
            big,
            mut bytes,
        } => {
            bytes.resize(if big { 8192 } else { 4096 }, 0);
            let _ = verify_page(PageId(page_id), &bytes);
        }
        PagesInput::SealedFlip {
            page_id,
            epoch,
            payload,
            offset,
            mask,
            id_bit,
        } => check_seal(
            PageId(page_id),
            CommitEpoch(epoch),
            payload,
            offset,
            mask,
            id_bit,
        ),
        PagesInput::RawTree {
            page_len,
            root,
            len,
            height,
            pages,
            ops,
        } => {
            let mut pages = MemPages::from_raw(pick_page_len(page_len), &pages);
            let header = TreeHeader {
                root: PageId(u64::from(root)),
                len,
                height,
            };
            if header.validate().is_ok() {
                run_ops(&mut pages, header, &ops, None);
            }
        }
        PagesInput::RawCatalog { page_len, pages } => {
            let pages = MemPages::from_raw(pick_page_len(page_len), &pages);
            read_database(&pages, None);
        }
        PagesInput::BuiltTree {
            page_len,
            entries,
            damage,
            ops,
        } => check_built(pick_page_len(page_len), &entries, &damage, &ops),
    }
}

fn pick_page_len(selector: u8) -> usize {
    PAGE_LENS_BYTES[usize::from(selector) % PAGE_LENS_BYTES.len()]
}

/// `verify_page` accepts the sealed page and refuses it after a one-byte
/// change, or under another page id.
fn check_seal(
    page_id: PageId,
    epoch: CommitEpoch,
    mut payload: Vec<u8>,
    offset: u16,
    mask: u8,
    id_bit: Option<u8>,
) {
    let page_size = 4096;
    payload.resize(page_size - PAGE_TRAILER_LEN, 0);
    let mut page = vec![0u8; page_size];
    seal_page(page_id, &payload, epoch, &mut page);
    assert_eq!(
        verify_page(page_id, &page),
        Ok(epoch),
        "a sealed page fails to verify"
    );
    if let Some(bit) = id_bit {
        let other = PageId(page_id.get() ^ (1 << (bit % 64)));
        assert!(
            verify_page(other, &page).is_err(),
            "a page verified under another page id"
        );
    }
    if mask != 0 {
        page[usize::from(offset) % page_size] ^= mask;
        assert!(
            verify_page(page_id, &page).is_err(),
            "a page with a flipped byte at {offset} verified"
        );
    }
}

/// Builds a database page set holding one table of `entries`, damages it,
/// reads it back through the catalog and runs `ops` on the table.
fn check_built(page_len: usize, entries: &[(Vec<u8>, Value)], damage: &[Damage], ops: &[TreeOp]) {
    let mut pages = MemPages::new(page_len);
    let mut tree = TreeHeader::EMPTY;
    let mut model = BTreeMap::new();
    for (key, value) in entries {
        let value = value.bytes();
        match btree::insert(&mut pages, &mut tree, key, &value) {
            Ok(old) => assert_eq!(old, model.insert(key.clone(), value), "insert's old value"),
            Err(err) => assert!(
                matches!(err, Error::TooLarge { .. }),
                "inserting into a sound tree failed: {err}"
            ),
        }
    }
    let mut catalog = TreeHeader::EMPTY;
    if let Err(err) = fuzz_hooks::store_catalog_entry(&mut pages, &mut catalog, TABLE_NAME, 1, tree)
    {
        panic!("storing a catalog entry failed: {err}");
    }
    let page_count = pages.pages.len() as u64;
    fuzz_hooks::encode_meta(&mut pages.pages[1], page_count, catalog);
    let sound = damage.iter().all(|d| d.mask == 0);
    for hurt in damage {
        let index = 1 + usize::from(hurt.page) % (pages.pages.len() - 1);
        pages.pages[index][usize::from(hurt.offset) % page_len] ^= hurt.mask;
    }
    let expected = sound.then_some((tree, &model));
    read_database(&pages, expected);
    run_ops(&mut pages, tree, ops, sound.then_some(model));
}

/// Reads the meta page, the catalog and every table it lists, checking
/// each tree. `expected`: the one table of an undamaged page set.
fn read_database(pages: &MemPages, expected: Option<(TreeHeader, &Model)>) {
    let tables = match fuzz_hooks::read_catalog(pages) {
        Ok(tables) => tables,
        Err(err) => {
            assert_damage_error(&err);
            assert!(expected.is_none(), "a sound catalog failed to read: {err}");
            return;
        }
    };
    if let Some((tree, _)) = expected {
        assert_eq!(tables, vec![(TABLE_NAME.to_string(), 1, tree)]);
    }
    for (_, _, tree) in &tables {
        let entries = collect(pages, tree, (Bound::Unbounded, Bound::Unbounded), false);
        let checked = btree::check_tree(pages, tree);
        if let Some((_, model)) = expected {
            assert_eq!(entries, Some(model_range(model, None, None)));
            match checked {
                Ok(stats) => assert!(stats.total_pages() as usize <= pages.pages.len()),
                Err(err) => panic!("check_tree refused a sound tree: {err}"),
            }
        } else if let Err(err) = checked {
            assert_damage_error(&err);
        }
    }
}

/// Runs `ops` on the tree; with a model (an undamaged tree) every answer
/// must match it. A failed write restores the pages, as a rollback would.
fn run_ops(pages: &mut MemPages, mut tree: TreeHeader, ops: &[TreeOp], mut model: Option<Model>) {
    for op in ops {
        match op {
            TreeOp::Get(key) => {
                let got = btree::get(pages, &tree, key).map(|v| v.map(|v| v.to_vec()));
                answer(got, model.as_ref().map(|m| m.get(key).cloned()));
            }
            TreeOp::Range { low, high, reverse } => {
                let bounds = (bound(low), bound(high));
                let got = collect(pages, &tree, bounds, *reverse);
                let expected = model.as_ref().map(|m| {
                    let mut entries = model_range(m, low.as_deref(), high.as_deref());
                    if *reverse {
                        entries.reverse();
                    }
                    entries
                });
                if let Some(expected) = expected {
                    assert_eq!(got, Some(expected), "range differs from the model");
                }
            }
            TreeOp::First | TreeOp::Last => {
                let first = matches!(op, TreeOp::First);
                let got = if first {
                    btree::first(pages, &tree)
                } else {
                    btree::last(pages, &tree)
                };
                let got = got.map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())));
                let expected = model.as_ref().map(|m| {
                    let edge = if first {
                        m.iter().next()
                    } else {
                        m.iter().next_back()
                    };
                    edge.map(|(k, v)| (k.clone(), v.clone()))
                });
                answer(got, expected);
            }
            TreeOp::Check => {
                if let Err(err) = btree::check_tree(pages, &tree) {
                    assert_damage_error(&err);
                    assert!(model.is_none(), "check_tree refused a sound tree: {err}");
                }
            }
            TreeOp::Insert(key, value) => {
                let value = value.bytes();
                let before = (pages.clone(), tree);
                match btree::insert(pages, &mut tree, key, &value) {
                    Ok(old) => {
                        if let Some(m) = model.as_mut() {
                            assert_eq!(old, m.insert(key.clone(), value), "insert's old value");
                        }
                    }
                    Err(err) => {
                        if !matches!(err, Error::TooLarge { .. }) {
                            assert_damage_error(&err);
                            assert!(model.is_none(), "insert into a sound tree failed: {err}");
                        }
                        (*pages, tree) = before;
                    }
                }
            }
            TreeOp::Remove(key) => {
                let before = (pages.clone(), tree);
                match btree::remove(pages, &mut tree, key) {
                    Ok(old) => {
                        if let Some(m) = model.as_mut() {
                            assert_eq!(old, m.remove(key), "remove's old value");
                        }
                    }
                    Err(err) => {
                        assert_damage_error(&err);
                        assert!(model.is_none(), "remove from a sound tree failed: {err}");
                        (*pages, tree) = before;
                    }
                }
            }
        }
    }
    if let Some(model) = &model {
        assert_eq!(
            tree.len,
            model.len() as u64,
            "header length differs from the model"
        );
        if let Err(err) = btree::check_tree(pages, &tree) {
            panic!("the tree fails its check after the operations: {err}");
        }
    }
}

/// A read's answer: with a model it must match; without one, an error
/// must be one that damaged pages explain.
fn answer<T: PartialEq + std::fmt::Debug>(got: Result<T>, expected: Option<T>) {
    match (got, expected) {
        (Ok(got), Some(expected)) => assert_eq!(got, expected, "read differs from the model"),
        (Ok(_), None) => {}
        (Err(err), expected) => {
            assert_damage_error(&err);
            assert!(expected.is_none(), "a read of a sound tree failed: {err}");
        }
    }
}

/// Damaged pages may only give `Corrupted` or an out-of-range page id.
fn assert_damage_error(err: &Error) {
    assert!(
        err.is_corruption() || matches!(err, Error::PageOutOfRange(_)),
        "damaged pages gave an error of the wrong kind: {err:?}"
    );
}

fn bound(key: &Option<Vec<u8>>) -> Bound<&[u8]> {
    key.as_deref().map_or(Bound::Unbounded, Bound::Included)
}

/// Entries in `bounds` (inclusive), in order or reversed; `None` on a typed error.
fn collect(
    pages: &MemPages,
    tree: &TreeHeader,
    bounds: (Bound<&[u8]>, Bound<&[u8]>),
    reverse: bool,
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let iter = match btree::range(pages, tree, bounds) {
        Ok(iter) => iter,
        Err(err) => {
            assert_damage_error(&err);
            return None;
        }
    };
    let entries: Result<Vec<_>> = if reverse {
        iter.rev()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    } else {
        iter.map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    };
    match entries {
        Ok(entries) => Some(entries),
        Err(err) => {
            assert_damage_error(&err);
            None
        }
    }
}

fn model_range(model: &Model, low: Option<&[u8]>, high: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    if let (Some(low), Some(high)) = (low, high) {
        if low > high {
            return Vec::new();
        }
    }
    let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
        low.map_or(Bound::Unbounded, Bound::Included),
        high.map_or(Bound::Unbounded, Bound::Included),
    );
    model
        .range::<[u8], _>(bounds)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u8) -> Vec<(Vec<u8>, Value)> {
        (0..n)
            .map(|i| {
                let value = if i % 7 == 0 {
                    Value::Repeated { byte: i, len: 900 }
                } else {
                    Value::Given(vec![i; 3])
                };
                (vec![b'k', i], value)
            })
            .collect()
    }

    #[test]
    fn built_tree_matches_its_model() {
        let ops = vec![
            TreeOp::Get(vec![b'k', 3]),
            TreeOp::Range {
                low: Some(vec![b'k', 2]),
                high: Some(vec![b'k', 40]),
                reverse: true,
            },
            TreeOp::Remove(vec![b'k', 7]),
            TreeOp::Insert(vec![b'z'], Value::Repeated { byte: 1, len: 2000 }),
            TreeOp::First,
            TreeOp::Last,
            TreeOp::Check,
        ];
        check_built(256, &entries(60), &[], &ops);
    }

    #[test]
    fn damaged_tree_answers_typed_errors() {
        for offset in (0..256u16).step_by(5) {
            let damage = [Damage {
                page: 3,
                offset,
                mask: 0x5a,
            }];
            check_built(256, &entries(40), &damage, &[TreeOp::Check, TreeOp::First]);
        }
    }

    #[test]
    fn seal_detects_flips() {
        check_seal(
            PageId(5),
            CommitEpoch(9),
            vec![1, 2, 3],
            4090,
            0x80,
            Some(63),
        );
    }

    #[test]
    // Regression for fuzz/RESULTS.md, finding 1 (fixed in catalog::list).
    fn huge_catalog_count_is_corrupted_not_a_panic() {
        let mut pages = MemPages::new(256);
        pages.pages.push(vec![0; 256]);
        let catalog = TreeHeader {
            root: PageId(2),
            len: 1 << 62,
            height: 1,
        };
        fuzz_hooks::encode_meta(&mut pages.pages[1], 3, catalog);
        let listed = fuzz_hooks::read_catalog(&pages);
        assert!(matches!(listed, Err(err) if err.is_corruption()));
    }

    #[test]
    #[should_panic(expected = "read differs from the model")]
    fn answer_fails_on_a_wrong_read() {
        answer(Ok(1), Some(2));
    }
}
