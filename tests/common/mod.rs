//! Shared test support: a deterministic commit workload and its in-memory
//! model, so a test can say exactly what the database must hold after the
//! first `n` commits of the workload.
#![allow(dead_code)]

use std::collections::BTreeMap;

use mmsb::{Database, PageId, PageRead, PageWrite, PageWriteTransaction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Pages allocated by commit 0 and written by every later commit.
pub const BASE_PAGES: u64 = 8;
/// Every this many commits, a commit also allocates a fresh page.
pub const ALLOCATE_EVERY: u64 = 25;
/// Where a page keeps the number of commits applied (the workload's counter).
pub const COUNTER_PAGE: PageId = PageId(2);

/// Pages as the first `n` commits of the workload leave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Commits applied.
    pub commits: u64,
    /// Page id → payload.
    pub pages: BTreeMap<PageId, Vec<u8>>,
}

/// One write of a commit: page, offset, bytes.
type PageWriteOp = (PageId, usize, Vec<u8>);

/// What commit `index` does, given the page length and the pages that exist
/// before it. Pure: the same arguments always give the same writes.
fn commit_plan(index: u64, page_len: usize, existing_pages: u64) -> (bool, Vec<PageWriteOp>) {
    let mut rng = StdRng::seed_from_u64(0x6d6d_7362 ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let allocates = index == 0 || index.is_multiple_of(ALLOCATE_EVERY);
    let pages_after = if index == 0 {
        BASE_PAGES
    } else {
        existing_pages + u64::from(allocates)
    };
    let mut writes = Vec::new();
    // Several scattered writes over several pages: a torn commit would show.
    for _ in 0..rng.gen_range(1..6) {
        let page = PageId(2 + rng.gen_range(0..pages_after));
        let len = rng.gen_range(1..300);
        let offset = rng.gen_range(16..page_len - len);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        writes.push((page, offset, bytes));
    }
    writes.push((COUNTER_PAGE, 0, (index + 1).to_le_bytes().to_vec()));
    (allocates, writes)
}

impl Model {
    /// Applies the next commit of the workload to the model.
    pub fn apply_next(&mut self, page_len: usize) {
        let index = self.commits;
        let (allocates, writes) = commit_plan(index, page_len, self.pages.len() as u64);
        if allocates {
            let count = if index == 0 { BASE_PAGES } else { 1 };
            for _ in 0..count {
                let id = PageId(2 + self.pages.len() as u64);
                self.pages.insert(id, vec![0u8; page_len]);
            }
        }
        for (page, offset, bytes) in writes {
            let image = self
                .pages
                .get_mut(&page)
                .expect("plan writes existing pages");
            image[offset..offset + bytes.len()].copy_from_slice(&bytes);
        }
        self.commits += 1;
    }

    /// The model after `n` commits.
    pub fn after(n: u64, page_len: usize) -> Model {
        let mut model = Model::default();
        while model.commits < n {
            model.apply_next(page_len);
        }
        model
    }
}

/// Performs commit `index` of the workload inside `tx` (not committed).
pub fn stage_commit(tx: &mut PageWriteTransaction, index: u64) -> mmsb::Result<()> {
    let page_len = tx.page_len();
    let existing = tx.page_count().saturating_sub(2);
    let (allocates, writes) = commit_plan(index, page_len, existing);
    if allocates {
        let count = if index == 0 { BASE_PAGES } else { 1 };
        for _ in 0..count {
            tx.allocate_page()?;
        }
    }
    for (page, offset, bytes) in writes {
        tx.write(page, offset, &bytes)?;
    }
    Ok(())
}

/// Runs commit `index` of the workload as one transaction.
pub fn run_commit(db: &Database, index: u64) -> mmsb::Result<()> {
    let mut tx = db.begin_page_write()?;
    stage_commit(&mut tx, index)?;
    tx.commit()?;
    Ok(())
}

/// Commits recorded by the counter page (0 for an empty database).
pub fn committed_count(db: &Database) -> mmsb::Result<u64> {
    let rx = db.begin_page_read()?;
    if rx.page_count() <= COUNTER_PAGE.get() {
        return Ok(0);
    }
    let page = rx.read_page(COUNTER_PAGE)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&page[0..8]);
    Ok(u64::from_le_bytes(word))
}

/// Reads every page of the database and compares it with the model after
/// `n` commits. Returns a description of the first difference.
pub fn verify_against_model(db: &Database, n: u64) -> Result<(), String> {
    verify_against(db, &Model::after(n, db.page_len()))
}

/// Reads every page of the database and compares it with `model`.
pub fn verify_against(db: &Database, model: &Model) -> Result<(), String> {
    let n = model.commits;
    let rx = db
        .begin_page_read()
        .map_err(|err| format!("begin_read: {err}"))?;
    let expected_pages = 2 + model.pages.len() as u64;
    if rx.page_count() != expected_pages {
        return Err(format!(
            "after {n} commits the model has {expected_pages} pages, the database {}",
            rx.page_count()
        ));
    }
    for (page, image) in &model.pages {
        let actual = rx
            .read_page(*page)
            .map_err(|err| format!("read {page}: {err}"))?;
        if actual[..] != image[..] {
            return Err(format!("{page} differs from the model after {n} commits"));
        }
    }
    Ok(())
}
