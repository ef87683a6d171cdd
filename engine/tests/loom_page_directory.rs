//! Model checks of the head directory (`HeadDirectory`, the page table's
//! lock-free read path) with loom: every interleaving, up to a preemption
//! bound, of two or three threads that publish, replace and clear a page's
//! word, read it on the fast path, and take its CLOCK reference bit.
//!
//! Run (release: loom explores many thousands of interleavings):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p mmsb-engine --release --test loom_page_directory
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS=N` sets the bound (default here: none, an
//! exhaustive search, for the two-thread models; 3 for the three-thread
//! ones); `LOOM_LOG=1` prints each model's count of interleavings. Without `--cfg loom` this file compiles to
//! nothing. What loom checks of the directory and what it does not (the
//! real epoch collector) is in the module docs of
//! `engine/src/page_directory.rs`: under loom the collector is a
//! deferred-until-quiescent stand-in, and each image's bytes are shadowed
//! by a loom cell that a read of an unpublished or reclaimed image trips.
//!
//! The properties:
//! - (a) a reader never sees a freed or torn image: every image it gets is
//!   whole (each model image is one byte repeated, checked in full), is one
//!   that was published, was published before the read in loom's
//!   happens-before (else loom reports a race on its shadow), and still had
//!   a directory reference when the reader took its own — or, for a
//!   borrowed read (`with_image`, which takes no reference), still has one
//!   at the end of the borrow, after a yield inside it that lets every
//!   other thread run (replace, clear, retire) meanwhile; successive reads
//!   of one word never go back in time; once the directory is dropped it
//!   holds no reference to any image (none leaked, none dropped twice);
//! - (b) the publication protocol, modelled as the page table runs it (an
//!   install clears the word under the shard lock, then the epoch is
//!   published through the real `SnapshotRegistry`; a fold publishes the
//!   head once no live snapshot needs an older version): a reader whose
//!   snapshot is at or past an install's epoch never gets the pre-install
//!   head through the directory, and a reader with an older snapshot never
//!   gets a newer head — every read, counted or borrowed, returns exactly
//!   its snapshot's version.
//!   Publishing the epoch before clearing the word makes this model fail
//!   (`publishing_the_epoch_before_the_clear_is_caught`);
//! - (c) the reference bit: a clear is never undone by a late mark (no
//!   stray bit on a cleared word), a late mark from a read of one image
//!   never lands on the image that replaced it, a take never undoes a
//!   publish, and a mark is taken exactly once.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc as ImageArc;

use loom::sync::{Arc, Mutex};
use loom::thread;
use mmsb_engine::{CommitEpoch, HeadDirectory, PageId, SnapshotRegistry};

/// Default preemption bound of the two-thread models when
/// `LOOM_MAX_PREEMPTIONS` is not set: none (they are small enough to
/// explore exhaustively, each in well under a second).
const TWO_THREAD_PREEMPTIONS: Option<usize> = None;

/// Default bound of the three-thread models (a few thousand interleavings
/// each; 4 takes ~10x longer).
const THREE_THREAD_PREEMPTIONS: Option<usize> = Some(3);

/// Bytes of every model image (the directory fixes one length).
const IMAGE_BYTES: usize = 16;

/// The page most models use (chunk 0 under loom's 4-word chunks).
const PAGE: PageId = PageId(1);

/// A second page, in another chunk.
const OTHER_PAGE: PageId = PageId(6);

/// Runs `f` under loom with `default_bound` preemptions (`None`: no
/// bound) unless `LOOM_MAX_PREEMPTIONS` says otherwise; with `LOOM_LOG`
/// set, prints how many interleavings it explored.
fn model(default_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = default_bound;
    }
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f();
    });
    if std::env::var_os("LOOM_LOG").is_some() {
        eprintln!(
            "{} interleavings (preemption bound {:?})",
            executions.load(Ordering::Relaxed),
            builder.preemption_bound
        );
    }
}

/// The image of `version`: that byte, `IMAGE_BYTES` times.
fn image(version: u8) -> ImageArc<[u8]> {
    ImageArc::from(vec![version; IMAGE_BYTES])
}

/// The version of a whole image; fails on a torn or foreign one.
fn version_of(image: &[u8]) -> u8 {
    assert_eq!(image.len(), IMAGE_BYTES, "an image of another length");
    let version = image[0];
    assert!(
        image.iter().all(|&byte| byte == version),
        "a torn image: {image:?}"
    );
    version
}

/// What a fast-path read of `page` found: its version, or `None`.
fn read(directory: &HeadDirectory, page: PageId) -> Option<u8> {
    directory.get(page).map(|image| version_of(&image))
}

/// What a borrowed read of `page` found (`HeadDirectory::with_image`): the
/// version, checked whole at the start of the borrow and again at its end,
/// after a yield that lets every other thread run meanwhile (a reclamation
/// inside the borrow would trip the shadow's check at its end).
fn read_borrowed(directory: &HeadDirectory, page: PageId) -> Option<u8> {
    directory
        .with_image(page, |image| {
            let version = version_of(image);
            thread::yield_now();
            assert_eq!(
                version_of(image),
                version,
                "the image changed under a borrow"
            );
            version
        })
        .ok()
}

/// How a model reader reads the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// `HeadDirectory::get`: takes a reference to the image.
    Counted,
    /// `HeadDirectory::with_image`: borrows it while pinned.
    Borrowed,
}

impl ReadKind {
    fn read(self, directory: &HeadDirectory, page: PageId) -> Option<u8> {
        match self {
            ReadKind::Counted => read(directory, page),
            ReadKind::Borrowed => read_borrowed(directory, page),
        }
    }
}

/// Checks that the directory, once dropped, holds no reference to any of
/// `images` (the caller holds the only other one).
fn assert_released(directory: Arc<HeadDirectory>, images: &[ImageArc<[u8]>]) {
    drop(directory);
    for image in images {
        assert_eq!(
            ImageArc::strong_count(image),
            1,
            "the directory kept (or lost) a reference to version {}",
            image[0]
        );
    }
}

/// Position of a read in the word's history `v1 → v2 → cleared`.
fn rank(seen: Option<u8>) -> u8 {
    seen.unwrap_or(u8::MAX)
}

/// (a) A writer replaces version 1 by 2 and then clears the word while a
/// reader reads it twice: each read is whole, is 1, 2 or nothing, and the
/// second is never older than the first (the reader keeps its images
/// while they are replaced and reclaimed under it).
#[test]
fn a_reader_never_sees_a_freed_or_torn_image() {
    model(TWO_THREAD_PREEMPTIONS, || {
        let directory = Arc::new(HeadDirectory::default());
        let (v1, v2) = (image(1), image(2));
        assert!(directory.publish(PAGE, &v1));
        let writer = {
            let (directory, v2) = (Arc::clone(&directory), ImageArc::clone(&v2));
            thread::spawn(move || {
                assert!(directory.publish(PAGE, &v2));
                directory.unpublish(PAGE);
            })
        };
        let first = directory.get(PAGE);
        let second = read(&directory, PAGE);
        let first_version = first.as_deref().map(version_of);
        writer.join().expect("writer");
        // Still whole after the writer replaced and reclaimed it.
        assert_eq!(first.as_deref().map(version_of), first_version);
        for seen in [first_version, second] {
            assert!(
                matches!(seen, None | Some(1 | 2)),
                "read {seen:?}, which was never published"
            );
        }
        assert!(
            rank(first_version) <= rank(second),
            "second read {second:?} older than the first {first_version:?}"
        );
        drop(first);
        assert_eq!(read(&directory, PAGE), None);
        assert_released(directory, &[v1, v2]);
    });
}

/// (a) The same with borrowed reads: a writer replaces version 1 by 2 and
/// clears the word while a reader borrows the image twice (yielding inside
/// each borrow): each borrow sees a whole, published image that stays
/// unreclaimed until the borrow ends, and the second is never older.
#[test]
fn a_borrowed_read_never_sees_a_freed_or_torn_image() {
    model(TWO_THREAD_PREEMPTIONS, || {
        let directory = Arc::new(HeadDirectory::default());
        let (v1, v2) = (image(1), image(2));
        assert!(directory.publish(PAGE, &v1));
        let writer = {
            let (directory, v2) = (Arc::clone(&directory), ImageArc::clone(&v2));
            thread::spawn(move || {
                assert!(directory.publish(PAGE, &v2));
                directory.unpublish(PAGE);
            })
        };
        let first = read_borrowed(&directory, PAGE);
        let second = read_borrowed(&directory, PAGE);
        writer.join().expect("writer");
        for seen in [first, second] {
            assert!(
                matches!(seen, None | Some(1 | 2)),
                "borrowed {seen:?}, which was never published"
            );
        }
        assert!(
            rank(first) <= rank(second),
            "second borrow {second:?} older than the first {first:?}"
        );
        assert_eq!(read_borrowed(&directory, PAGE), None);
        assert_released(directory, &[v1, v2]);
    });
}

/// (a) A counted and a borrowed reader against a writer that replaces and
/// clears the word: both get whole, published images.
#[test]
fn a_counted_and_a_borrowed_reader_with_a_writer() {
    model(THREE_THREAD_PREEMPTIONS, || {
        let directory = Arc::new(HeadDirectory::default());
        let (v1, v2) = (image(1), image(2));
        assert!(directory.publish(PAGE, &v1));
        let writer = {
            let (directory, v2) = (Arc::clone(&directory), ImageArc::clone(&v2));
            thread::spawn(move || {
                assert!(directory.publish(PAGE, &v2));
                directory.unpublish(PAGE);
            })
        };
        let borrower = {
            let directory = Arc::clone(&directory);
            thread::spawn(move || read_borrowed(&directory, PAGE))
        };
        let counted = read(&directory, PAGE);
        let borrowed = borrower.join().expect("borrower");
        writer.join().expect("writer");
        for seen in [counted, borrowed] {
            assert!(matches!(seen, None | Some(1 | 2)), "read {seen:?}");
        }
        assert_released(directory, &[v1, v2]);
    });
}

/// (a) Two readers and a writer over two pages in two chunks: the writer
/// replaces one page's image and clears the other's; each reader reads
/// both pages (in opposite orders) and gets whole, published images.
#[test]
fn two_readers_and_a_writer_over_two_pages() {
    model(THREE_THREAD_PREEMPTIONS, || {
        let directory = Arc::new(HeadDirectory::default());
        let (a1, a2, b1) = (image(1), image(2), image(11));
        assert!(directory.publish(PAGE, &a1));
        assert!(directory.publish(OTHER_PAGE, &b1));
        let writer = {
            let (directory, a2) = (Arc::clone(&directory), ImageArc::clone(&a2));
            thread::spawn(move || {
                assert!(directory.publish(PAGE, &a2));
                assert!(directory.unpublish(OTHER_PAGE), "published as referenced");
            })
        };
        let reader = {
            let directory = Arc::clone(&directory);
            thread::spawn(move || (read(&directory, OTHER_PAGE), read(&directory, PAGE)))
        };
        let (page, other) = (read(&directory, PAGE), read(&directory, OTHER_PAGE));
        let (other_too, page_too) = reader.join().expect("reader");
        writer.join().expect("writer");
        for seen in [page, page_too] {
            assert!(matches!(seen, Some(1 | 2)), "page read {seen:?}");
        }
        for seen in [other, other_too] {
            assert!(matches!(seen, None | Some(11)), "other page read {seen:?}");
        }
        assert_eq!(read(&directory, PAGE), Some(2));
        assert_eq!(read(&directory, OTHER_PAGE), None);
        assert_released(directory, &[a1, a2, b1]);
    });
}

/// In which order the model's install clears the word and publishes its
/// epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstallOrder {
    /// The page table's order: the word is cleared under the shard lock,
    /// then the epoch is published.
    ClearThenPublish,
    /// The broken order, to show that the model catches it: the version
    /// is installed and its epoch published before the word is cleared.
    PublishThenClear,
}

/// The page table's entry for `PAGE`: its versions by epoch (the base
/// first, then the chain), and whether the directory points at the head.
#[derive(Debug)]
struct Entry {
    versions: Vec<(u64, ImageArc<[u8]>)>,
    in_directory: bool,
}

/// The page table's protocol around the directory, reduced to one page:
/// one shard lock, the directory, and the snapshot registry. Version `e`'s
/// image is `image(e)`, so a read at snapshot `s` must return exactly `s`.
struct Table {
    shard: Mutex<Entry>,
    directory: HeadDirectory,
    registry: SnapshotRegistry,
}

impl Table {
    /// The page loaded at epoch 0 and published (`insert_clean`).
    fn new() -> Self {
        let table = Table {
            shard: Mutex::new(Entry {
                versions: vec![(0, image(0))],
                in_directory: false,
            }),
            directory: HeadDirectory::default(),
            registry: SnapshotRegistry::new(CommitEpoch(0)),
        };
        table.publish_if_alone(&mut table.shard.lock().expect("shard"));
        table
    }

    fn publish_if_alone(&self, entry: &mut Entry) {
        if let [(_, head)] = entry.versions.as_slice() {
            if !entry.in_directory {
                entry.in_directory = self.directory.publish(PAGE, head);
            }
        }
    }

    /// Commits version `epoch` (`PageTable::install`, then
    /// `SnapshotRegistry::publish` in `finish_commit`).
    fn install(&self, epoch: u64, order: InstallOrder) {
        let version = u8::try_from(epoch).expect("small model epochs");
        let mut entry = self.shard.lock().expect("shard");
        if order == InstallOrder::ClearThenPublish {
            self.unpublish(&mut entry);
        }
        entry.versions.push((epoch, image(version)));
        drop(entry);
        self.registry.publish(CommitEpoch(epoch));
        if order == InstallOrder::PublishThenClear {
            self.unpublish(&mut self.shard.lock().expect("shard"));
        }
    }

    fn unpublish(&self, entry: &mut Entry) {
        if entry.in_directory {
            entry.in_directory = false;
            self.directory.unpublish(PAGE);
        }
    }

    /// Folds up to the fold limit and publishes a lone head (`fold_pages`).
    fn fold(&self) {
        let limit = self.registry.fold_limit().get();
        let mut entry = self.shard.lock().expect("shard");
        let base = entry
            .versions
            .iter()
            .rposition(|&(epoch, _)| epoch <= limit)
            .unwrap_or(0);
        entry.versions.drain(..base);
        self.publish_if_alone(&mut entry);
    }

    /// A reader: takes a snapshot, reads the page as `PageTable::read`
    /// (or, `kind` borrowed, `PageTable::with_head` and then
    /// `PageTable::read`) does (directory first, then the locked path),
    /// checks that it got
    /// exactly its snapshot's version, releases the snapshot.
    fn read_and_check(&self, kind: ReadKind) {
        let snapshot = self.registry.acquire();
        let expected = u8::try_from(snapshot.get()).expect("small model epochs");
        let (version, path) = match kind.read(&self.directory, PAGE) {
            Some(version) => (version, "the directory"),
            None => {
                let entry = self.shard.lock().expect("shard");
                let (_, image) = entry
                    .versions
                    .iter()
                    .rev()
                    .find(|&&(epoch, _)| epoch <= snapshot.get())
                    .expect("a version at or below a live snapshot");
                (version_of(image), "the locked path")
            }
        };
        assert_eq!(
            version, expected,
            "snapshot {snapshot} got version {version} through {path}"
        );
        self.registry.release(snapshot);
    }
}

/// A writer installs `epochs` in `order`, folding after each; `readers`
/// threads (and the main thread) read once each.
fn publication_model(epochs: &[u64], readers: usize, order: InstallOrder, kind: ReadKind) {
    let table = Arc::new(Table::new());
    let writer = {
        let (table, epochs) = (Arc::clone(&table), epochs.to_vec());
        thread::spawn(move || {
            for epoch in epochs {
                table.install(epoch, order);
                table.fold();
            }
        })
    };
    let readers: Vec<_> = (0..readers)
        .map(|_| {
            let table = Arc::clone(&table);
            thread::spawn(move || table.read_and_check(kind))
        })
        .collect();
    table.read_and_check(kind);
    writer.join().expect("writer");
    for reader in readers {
        reader.join().expect("reader");
    }
    // No snapshot left: the next fold publishes the newest head.
    table.fold();
    let newest = epochs.last().copied().unwrap_or(0);
    assert_eq!(read(&table.directory, PAGE), u8::try_from(newest).ok());
}

/// (b) One install and fold against one reader.
#[test]
fn a_reader_at_or_past_an_install_never_gets_the_old_head() {
    model(TWO_THREAD_PREEMPTIONS, || {
        publication_model(&[1], 0, InstallOrder::ClearThenPublish, ReadKind::Counted);
    });
}

/// (b) Two installs, each folded, against one reader.
#[test]
fn every_read_gets_its_snapshots_version_across_two_installs() {
    model(TWO_THREAD_PREEMPTIONS, || {
        publication_model(
            &[1, 2],
            0,
            InstallOrder::ClearThenPublish,
            ReadKind::Counted,
        );
    });
}

/// (b) One install and fold against two readers.
#[test]
fn two_readers_get_their_snapshots_versions() {
    model(THREE_THREAD_PREEMPTIONS, || {
        publication_model(&[1], 1, InstallOrder::ClearThenPublish, ReadKind::Counted);
    });
}

/// (b) Borrowed reads: two installs, each folded, against one reader that
/// borrows the head (yielding inside the borrow).
#[test]
fn every_borrowed_read_gets_its_snapshots_version_across_two_installs() {
    model(TWO_THREAD_PREEMPTIONS, || {
        publication_model(
            &[1, 2],
            0,
            InstallOrder::ClearThenPublish,
            ReadKind::Borrowed,
        );
    });
}

/// (b) Borrowed reads: one install and fold against two borrowing readers.
#[test]
fn two_borrowing_readers_get_their_snapshots_versions() {
    model(THREE_THREAD_PREEMPTIONS, || {
        publication_model(&[1], 1, InstallOrder::ClearThenPublish, ReadKind::Borrowed);
    });
}

/// (b) The model catches the broken order through borrowed reads too.
#[test]
#[should_panic(expected = "through the directory")]
fn publishing_the_epoch_before_the_clear_is_caught_through_a_borrow() {
    model(TWO_THREAD_PREEMPTIONS, || {
        publication_model(&[1], 0, InstallOrder::PublishThenClear, ReadKind::Borrowed);
    });
}

/// (b) The model can fail: an install that publishes its epoch before it
/// clears the word lets a reader at that epoch get the old head.
#[test]
#[should_panic(expected = "through the directory")]
fn publishing_the_epoch_before_the_clear_is_caught() {
    model(TWO_THREAD_PREEMPTIONS, || {
        publication_model(&[1], 0, InstallOrder::PublishThenClear, ReadKind::Counted);
    });
}

/// Publishes version 0 of `PAGE` and takes its bit (published as
/// referenced), so that the next read marks the word.
fn directory_with_unmarked_page() -> (Arc<HeadDirectory>, ImageArc<[u8]>) {
    let directory = Arc::new(HeadDirectory::default());
    let v0 = image(0);
    assert!(directory.publish(PAGE, &v0));
    assert!(directory.take_referenced(PAGE), "published as referenced");
    (directory, v0)
}

/// (c) A read that loaded the word before a clear marks it too late: the
/// cleared word must stay clear (no stray bit for a later sweep or clear
/// to find).
#[test]
fn a_clear_is_never_undone_by_a_late_mark() {
    model(TWO_THREAD_PREEMPTIONS, || {
        let (directory, v0) = directory_with_unmarked_page();
        let writer = {
            let directory = Arc::clone(&directory);
            thread::spawn(move || directory.unpublish(PAGE))
        };
        let seen = read(&directory, PAGE);
        let marked_when_cleared = writer.join().expect("writer");
        assert!(matches!(seen, None | Some(0)), "read {seen:?}");
        assert!(
            seen.is_some() || !marked_when_cleared,
            "the clear found a mark though no read saw the image"
        );
        assert_eq!(read(&directory, PAGE), None);
        assert!(
            !directory.take_referenced(PAGE),
            "a mark outlived the clear"
        );
        assert!(!directory.unpublish(PAGE), "a mark outlived the clear");
        assert_released(directory, &[v0]);
    });
}

/// (c) A read of version 0 whose mark comes late, after the writer
/// replaced the image by version 1 and a sweep took version 1's bit: the
/// mark must not land on version 1 (it would be a reference nobody made).
#[test]
fn a_late_mark_never_lands_on_the_next_image() {
    model(TWO_THREAD_PREEMPTIONS, || {
        let (directory, v0) = directory_with_unmarked_page();
        let v1 = image(1);
        let writer = {
            let (directory, v1) = (Arc::clone(&directory), ImageArc::clone(&v1));
            thread::spawn(move || {
                directory.unpublish(PAGE);
                assert!(directory.publish(PAGE, &v1));
                assert!(directory.take_referenced(PAGE), "published as referenced");
            })
        };
        let seen = read(&directory, PAGE);
        writer.join().expect("writer");
        assert!(matches!(seen, None | Some(0 | 1)), "read {seen:?}");
        let marked = directory.take_referenced(PAGE);
        assert!(
            !marked || seen == Some(1),
            "version 1 is marked, but the only read saw {seen:?}"
        );
        assert_eq!(read(&directory, PAGE), Some(1));
        assert_released(directory, &[v0, v1]);
    });
}

/// (c) A read marks the word while a sweep takes its bit: the mark is
/// taken exactly once, by the sweep or by the next one, never lost and
/// never counted twice.
#[test]
fn a_mark_is_taken_exactly_once() {
    model(TWO_THREAD_PREEMPTIONS, || {
        let (directory, v0) = directory_with_unmarked_page();
        let sweeper = {
            let directory = Arc::clone(&directory);
            thread::spawn(move || directory.take_referenced(PAGE))
        };
        assert_eq!(read(&directory, PAGE), Some(0));
        let swept = sweeper.join().expect("sweeper");
        let next_sweep = directory.take_referenced(PAGE);
        assert!(
            swept != next_sweep,
            "one read, taken {} times",
            u8::from(swept) + u8::from(next_sweep)
        );
        assert_released(directory, &[v0]);
    });
}

/// (c) A writer replaces the image while a sweeper takes the bit twice and
/// a reader marks it: no take undoes the publish (the word ends at version
/// 1, whole), and the publish's own mark is seen by a take unless the
/// read's mark stands in for it.
#[test]
fn a_take_never_undoes_a_publish() {
    model(THREE_THREAD_PREEMPTIONS, || {
        let (directory, v0) = directory_with_unmarked_page();
        let v1 = image(1);
        let writer = {
            let (directory, v1) = (Arc::clone(&directory), ImageArc::clone(&v1));
            thread::spawn(move || assert!(directory.publish(PAGE, &v1)))
        };
        let sweeper = {
            let directory = Arc::clone(&directory);
            thread::spawn(move || {
                let first = directory.take_referenced(PAGE);
                let second = directory.take_referenced(PAGE);
                (first, second)
            })
        };
        let seen = read(&directory, PAGE);
        writer.join().expect("writer");
        let (first, second) = sweeper.join().expect("sweeper");
        assert!(matches!(seen, Some(0 | 1)), "read {seen:?}");
        let last = directory.take_referenced(PAGE);
        assert!(
            first || second || last,
            "the publish's mark was lost to a take"
        );
        assert_eq!(read(&directory, PAGE), Some(1));
        assert_released(directory, &[v0, v1]);
    });
}
