//! `mmsb check --repair` (`salvage`) copies every row that lives on intact
//! pages, with its value, into a new database that passes `check_database`;
//! rows on damaged pages are reported lost and never copied. Damage is
//! chosen at random among the leaf pages of a multi-table database that
//! includes a SQL table, and checked against a model of what each page held.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mmsb::{salvage, Connection, Database, Durability, Options, SalvageOptions, SalvageReport};
use proptest::prelude::*;

const PAGE_SIZE: usize = 4096;
const PAGE_LEN: usize = PAGE_SIZE - 16;
const LEAF_KIND: u8 = 0xB1;
const KV_ROWS: u64 = 700;
const SQL_ROWS: u64 = 300;

type Model = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

fn options() -> Options {
    Options {
        background_workers: false,
        // Fast tests: durability is not what is tested here.
        durability: Durability::Eventual {
            flush_interval_ms: 50,
        },
        ..Options::default()
    }
}

/// The pristine database: its files and the rows of every table.
struct Template {
    _dir: tempfile::TempDir,
    path: PathBuf,
    model: Model,
    /// Leaf pages other than the catalog's, and the (table, key) each holds.
    leaves: BTreeMap<u64, Vec<(String, Vec<u8>)>>,
    catalog_root: u64,
}

fn kv_key(table: &str, i: u64) -> Vec<u8> {
    format!("{table}#{i:06}").into_bytes()
}

fn build_template() -> Template {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.mmsb");
    let db = options().open(&path).expect("open");
    for table in ["alpha", "beta"] {
        let mut tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(table).expect("table");
            for i in 0..KV_ROWS {
                let value = format!("v:{table}:{i}:").into_bytes();
                let value = [value, vec![b'x'; (i % 50) as usize]].concat();
                t.insert(&kv_key(table, i), &value).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let mut conn = Connection::new(db.clone()).expect("session");
    conn.execute("CREATE TABLE people (name TEXT PRIMARY KEY, age INTEGER NOT NULL)")
        .expect("create");
    conn.execute("BEGIN").expect("begin");
    for i in 0..SQL_ROWS {
        conn.execute(&format!(
            "INSERT INTO people VALUES ('person-{i:06}', {})",
            i % 90
        ))
        .expect("insert");
    }
    conn.execute("COMMIT").expect("commit");
    drop(conn);
    let model = read_model(&db);
    drop(db); // checkpoints on close: every row is in the data file
    let bytes = std::fs::read(&path).expect("read");
    let catalog_root =
        u64::from_le_bytes(bytes[PAGE_SIZE + 32..PAGE_SIZE + 40].try_into().expect("8"));
    let leaves = locate_rows(&bytes, &model, catalog_root);
    Template {
        _dir: dir,
        path,
        model,
        leaves,
        catalog_root,
    }
}

fn read_model(db: &Database) -> Model {
    let rx = db.begin_read().expect("read");
    let mut model = Model::new();
    for name in rx.list_tables().expect("tables") {
        let table = rx.open_table(&name).expect("table");
        let rows = table
            .iter()
            .expect("iter")
            .map(|entry| {
                let (k, v) = entry.expect("entry");
                (k.to_vec(), v.to_vec())
            })
            .collect();
        model.insert(name, rows);
    }
    model
}

/// Which leaf page holds each row: the one whose payload contains the key.
/// Every key must be found in exactly one leaf (else the test is unsound).
fn locate_rows(
    bytes: &[u8],
    model: &Model,
    catalog_root: u64,
) -> BTreeMap<u64, Vec<(String, Vec<u8>)>> {
    let pages = (bytes.len() / PAGE_SIZE) as u64;
    let leaves: Vec<u64> = (2..pages)
        .filter(|&id| id != catalog_root && bytes[id as usize * PAGE_SIZE] == LEAF_KIND)
        .collect();
    let mut located: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for (table, rows) in model {
        for key in rows.keys() {
            let holders: Vec<u64> = leaves
                .iter()
                .copied()
                .filter(|&id| {
                    let payload =
                        &bytes[id as usize * PAGE_SIZE..id as usize * PAGE_SIZE + PAGE_LEN];
                    payload.windows(key.len()).any(|w| w == key.as_slice())
                })
                .collect();
            assert_eq!(
                holders.len(),
                1,
                "{table} key {key:?} found in leaves {holders:?}"
            );
            located
                .entry(holders[0])
                .or_default()
                .push((table.clone(), key.clone()));
        }
    }
    located
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

/// A copy of the template's files in a fresh directory, without the
/// double-write file (which would repair the damage).
fn copy_template(dir: &Path) -> PathBuf {
    let src_dir = template().path.parent().expect("dir");
    for entry in std::fs::read_dir(src_dir).expect("list") {
        let from = entry.expect("entry").path();
        let name = from.file_name().expect("name").to_owned();
        let to = dir.join(&name);
        if from.is_dir() {
            std::fs::create_dir_all(&to).expect("mkdir");
            for seg in std::fs::read_dir(&from).expect("list") {
                let seg = seg.expect("entry").path();
                std::fs::copy(&seg, to.join(seg.file_name().expect("name"))).expect("copy");
            }
        } else if !name.to_string_lossy().ends_with("-dwb") {
            std::fs::copy(&from, &to).expect("copy");
        }
    }
    dir.join("src.mmsb")
}

fn damage(path: &Path, pages: &BTreeSet<u64>, zero: bool) {
    let mut bytes = std::fs::read(path).expect("read");
    for &page in pages {
        let at = page as usize * PAGE_SIZE;
        if zero {
            bytes[at..at + PAGE_SIZE].fill(0);
        } else {
            bytes[at + 1234] ^= 0x5a;
        }
    }
    std::fs::write(path, bytes).expect("write");
}

fn run_salvage(src: &Path, dst: &Path) -> SalvageReport {
    let options = SalvageOptions {
        output: Options {
            checkpoint_on_close: true,
            ..options()
        },
        ..SalvageOptions::default()
    };
    salvage(src, dst, &options).expect("salvage runs")
}

/// The output holds exactly the model minus the rows of damaged leaves,
/// every value intact, and the report's counts agree.
fn assert_salvaged(report: &SalvageReport, dst: &Path, damaged: &BTreeSet<u64>) {
    let t = template();
    let lost: BTreeSet<(String, Vec<u8>)> = damaged
        .iter()
        .flat_map(|page| t.leaves.get(page).cloned().unwrap_or_default())
        .collect();
    let mut expected = t.model.clone();
    for (table, key) in &lost {
        expected.get_mut(table).expect("table").remove(key);
    }
    let check = report.output_check.as_ref().expect("output checked");
    assert!(check.is_clean(), "{:#?}", check.findings);
    let db = options().open(dst).expect("open output");
    let got = read_model(&db);
    drop(db);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        t.model.keys().collect::<Vec<_>>(),
        "every table comes along"
    );
    for (table, rows) in &expected {
        let got_rows = &got[table];
        for (key, value) in got_rows {
            assert_eq!(
                t.model[table].get(key),
                Some(value),
                "{table}: row {key:?} was not in the source or has another value"
            );
        }
        assert_eq!(
            got_rows.len(),
            rows.len(),
            "{table}: rows on intact pages missing"
        );
        assert_eq!(got_rows, rows);
        let entry = report
            .tables
            .iter()
            .find(|s| &s.name == table)
            .expect("table in report");
        let lost_here = lost.iter().filter(|(name, _)| name == table).count() as u64;
        assert_eq!(entry.rows_copied, rows.len() as u64);
        assert_eq!(entry.rows_lost(), lost_here, "{table}");
        assert_eq!(entry.is_complete(), lost_here == 0, "{table}: {entry:?}");
        let lost_pages: BTreeSet<u64> = entry.pages_lost.iter().map(|l| l.page.get()).collect();
        let damaged_here: BTreeSet<u64> = damaged
            .iter()
            .copied()
            .filter(|p| {
                t.leaves
                    .get(p)
                    .is_some_and(|rows| rows.iter().any(|(n, _)| n == table))
            })
            .collect();
        assert_eq!(lost_pages, damaged_here, "{table}: lost pages reported");
    }
    assert_eq!(report.is_complete(), lost.is_empty());
}

#[test]
fn an_intact_database_is_copied_whole_and_sql_works_on_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = copy_template(dir.path());
    let dst = dir.path().join("out.mmsb");
    let report = run_salvage(&src, &dst);
    assert!(report.is_complete(), "{report:#?}");
    assert_salvaged(&report, &dst, &BTreeSet::new());
    let db = Database::open(&dst).expect("open");
    let mut conn = Connection::new(db).expect("session");
    let rows = conn
        .query("SELECT count(*) FROM people WHERE age < 10", &[])
        .expect("query");
    assert_eq!(
        rows.scalar::<i64>().expect("count"),
        (0..SQL_ROWS).filter(|i| i % 90 < 10).count() as i64
    );
}

#[test]
fn a_lost_catalog_leaf_loses_the_tables_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = copy_template(dir.path());
    damage(&src, &BTreeSet::from([template().catalog_root]), false);
    let dst = dir.path().join("out.mmsb");
    let report = run_salvage(&src, &dst);
    assert!(!report.is_complete());
    assert!(report.tables.is_empty());
    assert_eq!(report.catalog_lost.len(), 1);
    assert_eq!(report.catalog_lost[0].page.get(), template().catalog_root);
    assert!(report.output_check.as_ref().is_some_and(|c| c.is_clean()));
}

#[test]
fn an_existing_output_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = copy_template(dir.path());
    std::fs::write(dir.path().join("out.mmsb"), b"precious").expect("write");
    let err = salvage(
        &src,
        dir.path().join("out.mmsb"),
        &SalvageOptions::default(),
    )
    .expect_err("refused");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("out.mmsb")).expect("read"),
        b"precious"
    );
}

#[test]
fn a_lost_overflow_chain_loses_only_its_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("src.mmsb");
    let big = vec![b'B'; 3 * PAGE_SIZE];
    {
        let db = options().open(&path).expect("open");
        let mut tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table("t").expect("table");
            t.insert(b"a-small", b"1").expect("insert");
            t.insert(b"b-big", &big).expect("insert");
            t.insert(b"c-small", b"3").expect("insert");
        }
        tx.commit().expect("commit");
    }
    let _ = std::fs::remove_file(dir.path().join("src.mmsb-dwb"));
    let bytes = std::fs::read(&path).expect("read");
    let overflow = (2..(bytes.len() / PAGE_SIZE) as u64)
        .find(|&id| bytes[id as usize * PAGE_SIZE] == 0xB3)
        .expect("an overflow page");
    damage(&path, &BTreeSet::from([overflow]), false);
    let dst = dir.path().join("out.mmsb");
    let report = run_salvage(&path, &dst);
    let t = &report.tables[0];
    assert_eq!((t.rows_expected, t.rows_copied, t.rows_lost()), (3, 2, 1));
    assert!(!t.is_complete());
    let db = options().open(&dst).expect("open");
    let rows = read_model(&db);
    let keys: Vec<&[u8]> = rows["t"].keys().map(Vec::as_slice).collect();
    assert_eq!(keys, vec![&b"a-small"[..], b"c-small"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn every_row_on_an_intact_page_is_salvaged(
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..5),
        zero in any::<bool>(),
    ) {
        let t = template();
        let leaves: Vec<u64> = t.leaves.keys().copied().collect();
        let damaged: BTreeSet<u64> = picks.iter().map(|i| leaves[i.index(leaves.len())]).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let src = copy_template(dir.path());
        damage(&src, &damaged, zero);
        let dst = dir.path().join("out.mmsb");
        let report = run_salvage(&src, &dst);
        assert_salvaged(&report, &dst, &damaged);
    }
}
