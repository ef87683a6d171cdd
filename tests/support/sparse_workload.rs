//! A deterministic sparse-update workload over a table of fixed-size rows,
//! shared by `tests/delta_compression_ratio.rs` and `benches/codec.rs`.
//!
//! The table is an `accounts` table of 10 000 rows of 100 bytes, 40 rows per
//! 4 KiB page (250 pages) after a 16-byte page header; the last 80 bytes of
//! each page are free space (zeros). A row holds, little-endian:
//!
//! | bytes  | field        | contents                                           |
//! |--------|--------------|----------------------------------------------------|
//! | 0..8   | id           | u64, 1..=10 000                                     |
//! | 8..16  | balance      | i64 cents, uniform in 0..10 000 000                 |
//! | 16..20 | login_count  | u32, uniform in 0..5 000                            |
//! | 20..28 | created_at   | u64 µs since the Unix epoch, within 2020-2024       |
//! | 28..36 | last_seen    | u64 µs, between created_at and the workload's start |
//! | 36     | status       | u8, 0..4                                            |
//! | 37     | flags        | u8, random bits                                     |
//! | 38..40 | region       | u16, 0..300                                         |
//! | 40..64 | name         | ASCII "First Last", zero-padded                     |
//! | 64..96 | email        | ASCII "first.last<n>@domain", zero-padded           |
//! | 96..100| row_version  | u32, incremented by every update of the row         |
//!
//! Each commit is one statement run against 100 rows drawn uniformly at
//! random (a page may get several), cycling through three kinds:
//! - deposit: `balance += amount`, amount uniform in 1..=20 000 cents;
//! - login: `login_count += 1, last_seen = now`;
//! - touch: `last_seen = now`;
//!
//! and every update also bumps `row_version`. `now` advances by 0.2 to 5 ms
//! per commit. As the engine does (`engine/src/txn.rs`), each commit gives
//! one delta per dirty page, `Delta::from_diff(old_page, new_page)`, in page
//! id order. Nothing here is tuned to the codec: the changed bytes are the
//! low bytes of counters, balances and timestamps, which is what such
//! updates change. Not modelled: a page header the engine might rewrite on
//! every update (an epoch or checksum stamp would add one short run of
//! 4-8 bytes per delta).

// Each target that includes this module uses a different subset of it.
#![allow(dead_code)]

use mmsb_wal::{Delta, PageId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Size of a page.
pub const PAGE_BYTES: usize = 4096;
/// Size of a row.
pub const ROW_BYTES: usize = 100;
/// Rows on a page.
pub const ROWS_PER_PAGE: usize = 40;
/// Bytes of the page header before the first row.
pub const PAGE_HEADER_BYTES: usize = 16;
/// Rows in the table.
pub const ROW_COUNT: usize = 10_000;
/// Rows each commit updates.
pub const ROWS_PER_COMMIT: usize = 100;

const BALANCE: usize = 8;
const LOGIN_COUNT: usize = 16;
const LAST_SEEN: usize = 28;
const ROW_VERSION: usize = 96;
/// 2024-01-01T00:00:00Z in µs.
const START_US: u64 = 1_704_067_200_000_000;
const YEAR_US: u64 = 365 * 24 * 3600 * 1_000_000;

const FIRST: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];
const LAST: [&str; 10] = [
    "smith", "jones", "garcia", "miller", "davis", "lopez", "wilson", "moore", "taylor", "clark",
];
const DOMAINS: [&str; 4] = ["example.com", "mail.test", "corp.invalid", "inbox.example"];

/// The table's pages and the clock of the workload.
pub struct SparseWorkload {
    pages: Vec<Vec<u8>>,
    rng: StdRng,
    now_us: u64,
    commit_index: usize,
}

impl SparseWorkload {
    /// The initial table, generated from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let page_count = ROW_COUNT.div_ceil(ROWS_PER_PAGE);
        let mut pages = vec![vec![0u8; PAGE_BYTES]; page_count];
        for (index, page) in pages.iter_mut().enumerate() {
            write_page_header(page, index, page_count);
        }
        for row in 0..ROW_COUNT {
            let bytes = initial_row(row as u64 + 1, &mut rng);
            let (page, at) = row_location(row);
            pages[page][at..at + ROW_BYTES].copy_from_slice(&bytes);
        }
        SparseWorkload {
            pages,
            rng,
            now_us: START_US,
            commit_index: 0,
        }
    }

    /// Runs the next commit of [`ROWS_PER_COMMIT`] rows; returns its deltas
    /// in page id order.
    pub fn next_commit(&mut self) -> Vec<Delta> {
        self.next_commit_of(ROWS_PER_COMMIT)
    }

    /// Runs the next commit, updating `rows` rows; returns its deltas in
    /// page id order.
    pub fn next_commit_of(&mut self, rows: usize) -> Vec<Delta> {
        self.now_us += self.rng.gen_range(200..5_000);
        let kind = self.commit_index % 3;
        self.commit_index += 1;
        let mut dirty: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
        for _ in 0..rows {
            let row = self.rng.gen_range(0..ROW_COUNT);
            let (page, at) = row_location(row);
            let image = dirty
                .entry(page)
                .or_insert_with(|| self.pages[page].clone());
            let row_bytes = &mut image[at..at + ROW_BYTES];
            match kind {
                0 => add_i64(row_bytes, BALANCE, self.rng.gen_range(1..=20_000)),
                1 => {
                    add_u32(row_bytes, LOGIN_COUNT, 1);
                    set_u64(row_bytes, LAST_SEEN, self.now_us);
                }
                _ => set_u64(row_bytes, LAST_SEEN, self.now_us),
            }
            add_u32(row_bytes, ROW_VERSION, 1);
        }
        let mut deltas = Vec::with_capacity(dirty.len());
        for (page, image) in dirty {
            let delta = Delta::from_diff(PageId(page as u64 + 1), &self.pages[page], &image)
                .expect("pages of one size");
            deltas.push(delta);
            self.pages[page] = image;
        }
        deltas
    }

    /// A dense commit: every other row of each of the first `pages` pages is
    /// replaced by a freshly generated row (half of each page's row bytes
    /// change, in 20 runs of 100 bytes). Returns the deltas.
    pub fn rewrite_half_of_each_page(&mut self, pages: usize) -> Vec<Delta> {
        let mut deltas = Vec::with_capacity(pages);
        for page in 0..pages.min(self.pages.len()) {
            let mut image = self.pages[page].clone();
            for slot in (0..ROWS_PER_PAGE).step_by(2) {
                let row = page * ROWS_PER_PAGE + slot;
                let id = (ROW_COUNT + row) as u64 + 1;
                let at = PAGE_HEADER_BYTES + slot * ROW_BYTES;
                image[at..at + ROW_BYTES].copy_from_slice(&initial_row(id, &mut self.rng));
            }
            let delta = Delta::from_diff(PageId(page as u64 + 1), &self.pages[page], &image)
                .expect("pages of one size");
            deltas.push(delta);
            self.pages[page] = image;
        }
        deltas
    }

    /// Full 4 KiB images of the first `pages` pages, as written when a page
    /// is created or rewritten whole (bulk load, split).
    pub fn full_page_images(&self, pages: usize) -> Vec<Delta> {
        self.pages
            .iter()
            .take(pages)
            .enumerate()
            .map(|(page, image)| {
                Delta::full_image(PageId(page as u64 + 1), image).expect("page fits")
            })
            .collect()
    }
}

/// Page index and byte offset of a row.
fn row_location(row: usize) -> (usize, usize) {
    let page = row / ROWS_PER_PAGE;
    let at = PAGE_HEADER_BYTES + (row % ROWS_PER_PAGE) * ROW_BYTES;
    (page, at)
}

/// Leaf page header: kind u16, row count u16, free-space offset u32, next leaf u64.
fn write_page_header(page: &mut [u8], index: usize, page_count: usize) {
    page[0..2].copy_from_slice(&2u16.to_le_bytes());
    page[2..4].copy_from_slice(&(ROWS_PER_PAGE as u16).to_le_bytes());
    let used = PAGE_HEADER_BYTES + ROWS_PER_PAGE * ROW_BYTES;
    page[4..8].copy_from_slice(&(used as u32).to_le_bytes());
    let next = if index + 1 < page_count {
        index as u64 + 2
    } else {
        0
    };
    page[8..16].copy_from_slice(&next.to_le_bytes());
}

fn initial_row(id: u64, rng: &mut StdRng) -> [u8; ROW_BYTES] {
    let mut row = [0u8; ROW_BYTES];
    row[0..8].copy_from_slice(&id.to_le_bytes());
    row[8..16].copy_from_slice(&rng.gen_range(0i64..10_000_000).to_le_bytes());
    row[16..20].copy_from_slice(&rng.gen_range(0u32..5_000).to_le_bytes());
    let created = START_US - rng.gen_range(0..4 * YEAR_US);
    row[20..28].copy_from_slice(&created.to_le_bytes());
    let last_seen = rng.gen_range(created..START_US);
    row[28..36].copy_from_slice(&last_seen.to_le_bytes());
    row[36] = rng.gen_range(0..4);
    row[37] = rng.gen();
    row[38..40].copy_from_slice(&rng.gen_range(0u16..300).to_le_bytes());
    let first = FIRST[rng.gen_range(0..FIRST.len())];
    let last = LAST[rng.gen_range(0..LAST.len())];
    write_text(&mut row[40..64], &format!("{first} {last}"));
    let domain = DOMAINS[rng.gen_range(0..DOMAINS.len())];
    write_text(
        &mut row[64..96],
        &format!("{first}.{last}{}@{domain}", id % 1000),
    );
    row[96..100].copy_from_slice(&rng.gen_range(1u32..50).to_le_bytes());
    row
}

fn write_text(field: &mut [u8], text: &str) {
    let len = text.len().min(field.len());
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
}

fn add_i64(row: &mut [u8], at: usize, amount: i64) {
    let mut word = [0u8; 8];
    word.copy_from_slice(&row[at..at + 8]);
    let value = i64::from_le_bytes(word).wrapping_add(amount);
    row[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn add_u32(row: &mut [u8], at: usize, amount: u32) {
    let mut word = [0u8; 4];
    word.copy_from_slice(&row[at..at + 4]);
    let value = u32::from_le_bytes(word).wrapping_add(amount);
    row[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn set_u64(row: &mut [u8], at: usize, value: u64) {
    row[at..at + 8].copy_from_slice(&value.to_le_bytes());
}
