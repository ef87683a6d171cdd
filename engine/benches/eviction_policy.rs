//! CLOCK against LRU and 2Q on the same access traces: hit ratio (printed
//! once per policy and trace; it does not depend on timing) and the cost of
//! one access (criterion, `Throughput::Elements` = accesses).
//!
//! The engine evicts with CLOCK (`page_table::PageTable::evict_shard`); the
//! policies here are single-threaded models of the three, over the same
//! cache size and the same fast hash, so that only the policy differs:
//! - CLOCK: a slot array with a reference bit per entry and a hand; a hit
//!   sets the bit, a miss sweeps from the hand (clearing bits) to the first
//!   clear one and replaces it.
//! - LRU: a doubly linked list in a slot array; a hit moves the entry to the
//!   front, a miss drops the tail.
//! - CLOCK with cold inserts (`clock_cold`): the same, but a page enters
//!   with its bit clear, so one read does not earn it a second chance.
//! - 2Q (Johnson and Shasha, "simplified full version"): a FIFO `A1in` of
//!   25% of the cache for first accesses, a ghost list `A1out` of the keys of
//!   the last 50% cache-sizes' worth dropped from it, and an LRU `Am` for
//!   keys seen again while in `A1out`.
//!
//! Traces (`CACHE_PAGES` = 4096 pages, `TRACE_ACCESSES` accesses each, seeded):
//! - uniform: keys uniform over 8x the cache;
//! - zipf(0.99): keys over 8x the cache, rank r drawn with weight 1/r^0.99;
//! - scan+hot: half the accesses uniform over a hot set of half the cache,
//!   half a sequential scan through 8x the cache (a table scan beside
//!   point lookups).
//!
//! `cargo bench -p mmsb-engine --bench eviction_policy`

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Pages the cache holds.
const CACHE_PAGES: usize = 4096;
/// Keys of the uniform and zipf traces, and of the scan: 8x the cache.
const KEY_SPACE: u64 = 8 * CACHE_PAGES as u64;
/// Accesses in each trace.
const TRACE_ACCESSES: usize = 1 << 19;
/// Exponent of the zipf trace.
const ZIPF_EXPONENT: f64 = 0.99;
/// Share of 2Q's cache given to `A1in`, and ghost keys kept in `A1out`.
const TWO_Q_IN_PERCENT: usize = 25;
const TWO_Q_OUT_PERCENT: usize = 50;
/// No entry: the end of a list.
const NIL: usize = usize::MAX;

/// A multiplicative hash (the engine's page maps use one of the same kind).
#[derive(Default)]
struct MulHasher(u64);

impl Hasher for MulHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (value ^ (value >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<MulHasher>>;

fn map<V>(capacity: usize) -> Map<V> {
    Map::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

/// A cache replacement policy: `access` returns whether `key` was cached.
trait Policy {
    fn name(&self) -> &'static str;
    fn access(&mut self, key: u64) -> bool;
}

/// CLOCK (second chance). `insert_referenced`: whether a page enters with
/// its bit set (the engine's choice) or clear (`clock_cold`: a page read
/// once goes at the hand's next pass unless read again, as in 2Q's `A1in`).
struct Clock {
    slots: Vec<(u64, bool)>,
    index: Map<usize>,
    hand: usize,
    capacity: usize,
    insert_referenced: bool,
}

impl Clock {
    fn new(capacity: usize, insert_referenced: bool) -> Self {
        Clock {
            slots: Vec::with_capacity(capacity),
            index: map(capacity),
            hand: 0,
            capacity,
            insert_referenced,
        }
    }
}

impl Policy for Clock {
    fn name(&self) -> &'static str {
        if self.insert_referenced {
            "clock"
        } else {
            "clock_cold"
        }
    }

    fn access(&mut self, key: u64) -> bool {
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot].1 = true;
            return true;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push((key, self.insert_referenced));
            return false;
        }
        while self.slots[self.hand].1 {
            self.slots[self.hand].1 = false;
            self.hand = (self.hand + 1) % self.capacity;
        }
        let victim = self.slots[self.hand].0;
        self.index.remove(&victim);
        self.slots[self.hand] = (key, self.insert_referenced);
        self.index.insert(key, self.hand);
        self.hand = (self.hand + 1) % self.capacity;
        false
    }
}

/// An LRU list over a slot array: `head` is the most recent entry.
struct LruList {
    keys: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
    tail: usize,
    free: Vec<usize>,
}

impl LruList {
    fn new(capacity: usize) -> Self {
        LruList {
            keys: Vec::with_capacity(capacity),
            prev: Vec::with_capacity(capacity),
            next: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            free: Vec::new(),
        }
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.prev[slot], self.next[slot]);
        if prev == NIL {
            self.head = next;
        } else {
            self.next[prev] = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.prev[next] = prev;
        }
    }

    fn push_front(&mut self, slot: usize) {
        self.prev[slot] = NIL;
        self.next[slot] = self.head;
        if self.head == NIL {
            self.tail = slot;
        } else {
            self.prev[self.head] = slot;
        }
        self.head = slot;
    }

    fn touch(&mut self, slot: usize) {
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Adds `key` at the front; returns its slot.
    fn insert(&mut self, key: u64) -> usize {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.keys[slot] = key;
                slot
            }
            None => {
                self.keys.push(key);
                self.prev.push(NIL);
                self.next.push(NIL);
                self.keys.len() - 1
            }
        };
        self.push_front(slot);
        slot
    }

    /// Drops the least recent entry; returns its key.
    fn pop_back(&mut self) -> Option<u64> {
        let slot = self.tail;
        if slot == NIL {
            return None;
        }
        self.unlink(slot);
        self.free.push(slot);
        Some(self.keys[slot])
    }
}

/// LRU.
struct Lru {
    list: LruList,
    index: Map<usize>,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Lru {
            list: LruList::new(capacity),
            index: map(capacity),
            capacity,
        }
    }
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }

    fn access(&mut self, key: u64) -> bool {
        if let Some(&slot) = self.index.get(&key) {
            self.list.touch(slot);
            return true;
        }
        if self.index.len() >= self.capacity {
            if let Some(victim) = self.list.pop_back() {
                self.index.remove(&victim);
            }
        }
        let slot = self.list.insert(key);
        self.index.insert(key, slot);
        false
    }
}

/// Where 2Q holds a key.
#[derive(Clone, Copy)]
enum Queue {
    /// In `A1in`, the FIFO of first accesses.
    In,
    /// In `Am`, the LRU (its slot).
    Main(usize),
}

/// 2Q (simplified full version).
struct TwoQ {
    index: Map<Queue>,
    a1in: VecDeque<u64>,
    a1out: VecDeque<(u64, u64)>,
    ghosts: Map<u64>,
    am: LruList,
    capacity: usize,
    in_max: usize,
    out_max: usize,
    seq: u64,
}

impl TwoQ {
    fn new(capacity: usize) -> Self {
        TwoQ {
            index: map(capacity),
            a1in: VecDeque::with_capacity(capacity),
            a1out: VecDeque::new(),
            ghosts: map(capacity),
            am: LruList::new(capacity),
            capacity,
            in_max: (capacity * TWO_Q_IN_PERCENT / 100).max(1),
            out_max: (capacity * TWO_Q_OUT_PERCENT / 100).max(1),
            seq: 0,
        }
    }

    /// Frees one entry: from `A1in` (remembered in `A1out`) when it is
    /// over its share, else the least recent of `Am`.
    fn reclaim(&mut self) {
        if self.a1in.len() > self.in_max || self.am.head == NIL {
            if let Some(key) = self.a1in.pop_front() {
                self.index.remove(&key);
                self.seq += 1;
                self.ghosts.insert(key, self.seq);
                self.a1out.push_back((key, self.seq));
                while self.ghosts.len() > self.out_max {
                    if let Some((old, seq)) = self.a1out.pop_front() {
                        if self.ghosts.get(&old) == Some(&seq) {
                            self.ghosts.remove(&old);
                        }
                    }
                }
                return;
            }
        }
        if let Some(victim) = self.am.pop_back() {
            self.index.remove(&victim);
        }
    }
}

impl Policy for TwoQ {
    fn name(&self) -> &'static str {
        "2q"
    }

    fn access(&mut self, key: u64) -> bool {
        match self.index.get(&key) {
            Some(Queue::Main(slot)) => {
                let slot = *slot;
                self.am.touch(slot);
                return true;
            }
            Some(Queue::In) => return true,
            None => {}
        }
        if self.index.len() >= self.capacity {
            self.reclaim();
        }
        if self.ghosts.remove(&key).is_some() {
            let slot = self.am.insert(key);
            self.index.insert(key, Queue::Main(slot));
        } else {
            self.a1in.push_back(key);
            self.index.insert(key, Queue::In);
        }
        false
    }
}

fn uniform_trace(rng: &mut StdRng) -> Vec<u64> {
    (0..TRACE_ACCESSES)
        .map(|_| rng.gen_range(0..KEY_SPACE))
        .collect()
}

/// Keys drawn with weight 1/rank^s, ranks scattered over the key space.
fn zipf_trace(rng: &mut StdRng) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEY_SPACE as usize);
    let mut total = 0.0;
    for rank in 1..=KEY_SPACE {
        total += 1.0 / (rank as f64).powf(ZIPF_EXPONENT);
        cdf.push(total);
    }
    (0..TRACE_ACCESSES)
        .map(|_| {
            let draw = rng.gen::<f64>() * total;
            let rank = cdf.partition_point(|&c| c < draw) as u64;
            // Scatter ranks so hot keys are not neighbours.
            rank.wrapping_mul(0x9E37_79B9) % KEY_SPACE
        })
        .collect()
}

/// Half the accesses uniform over a hot set of half the cache, half a
/// sequential scan over cold keys (disjoint from the hot ones).
fn scan_hot_trace(rng: &mut StdRng) -> Vec<u64> {
    let hot = CACHE_PAGES as u64 / 2;
    let mut scan = 0u64;
    (0..TRACE_ACCESSES)
        .map(|_| {
            if rng.gen_bool(0.5) {
                rng.gen_range(0..hot)
            } else {
                scan = (scan + 1) % KEY_SPACE;
                hot + scan
            }
        })
        .collect()
}

fn policies() -> Vec<Box<dyn Policy>> {
    vec![
        Box::new(Clock::new(CACHE_PAGES, true)),
        Box::new(Lru::new(CACHE_PAGES)),
        Box::new(TwoQ::new(CACHE_PAGES)),
        Box::new(Clock::new(CACHE_PAGES, false)),
    ]
}

/// Replays `trace` (twice: the first pass warms the cache); hits of the second.
fn replay(policy: &mut dyn Policy, trace: &[u64]) -> usize {
    for &key in trace {
        policy.access(key);
    }
    trace.iter().filter(|&&key| policy.access(key)).count()
}

/// The models behave as their policies must: a working set the size of
/// the cache always hits once warm; a cyclic scan one page larger than the
/// cache never hits under LRU (nor CLOCK, which then acts as FIFO).
fn self_check() {
    let fits: Vec<u64> = (0..4 * CACHE_PAGES as u64)
        .map(|i| i % CACHE_PAGES as u64)
        .collect();
    let cyclic: Vec<u64> = (0..4 * (CACHE_PAGES as u64 + 1))
        .map(|i| i % (CACHE_PAGES as u64 + 1))
        .collect();
    for mut policy in policies() {
        assert_eq!(
            replay(policy.as_mut(), &fits),
            fits.len(),
            "{}",
            policy.name()
        );
    }
    for mut policy in policies().into_iter().take(2) {
        assert_eq!(replay(policy.as_mut(), &cyclic), 0, "{}", policy.name());
    }
}

fn bench(c: &mut Criterion) {
    self_check();
    let mut rng = StdRng::seed_from_u64(0x6576_6963);
    let traces = [
        ("uniform", uniform_trace(&mut rng)),
        ("zipf_0.99", zipf_trace(&mut rng)),
        ("scan_hot", scan_hot_trace(&mut rng)),
    ];
    println!("eviction_policy: hit ratio after a warm-up pass, {CACHE_PAGES}-page cache");
    for (trace_name, trace) in &traces {
        for mut policy in policies() {
            let hits = replay(policy.as_mut(), trace);
            println!(
                "  {trace_name:<10} {:<6} hit ratio {:.4}",
                policy.name(),
                hits as f64 / trace.len() as f64
            );
        }
    }
    let mut group = c.benchmark_group("eviction_policy");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(2));
    group.throughput(Throughput::Elements(TRACE_ACCESSES as u64));
    for (trace_name, trace) in &traces {
        for make in 0..policies().len() {
            let name = policies()[make].name();
            group.bench_function(format!("{trace_name}/{name}"), |b| {
                // A warm cache per sample; each iteration is one pass.
                let mut policy = policies().swap_remove(make);
                for &key in trace.iter() {
                    policy.access(key);
                }
                b.iter(|| {
                    let mut hits = 0usize;
                    for &key in trace.iter() {
                        hits += usize::from(policy.access(black_box(key)));
                    }
                    black_box(hits)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
