//! Loading a partner's CSV keeps the encoded matrix, not the file's text or its
//! records: the heap in use while a 20,000-row telco file is loaded and split stays
//! under twice the feature matrix (rows × features × 8 bytes).
//!
//! The heap is counted by a global allocator that wraps the system's; a reallocation
//! counts by how much it grows or shrinks. This file holds one test, so nothing else
//! allocates while it measures. `cargo bench --bench csv_memory` measures the agent's
//! resident set on 1,000,000 rows.
// A `GlobalAlloc` implementation is unsafe by definition; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use consortia_model::{Dataset, TaskSpec};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

fn shrank(n: usize) {
    LIVE.fetch_sub(n, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/telco_churn_ibm.csv"
);
const TASK: &str = include_str!("../../examples/telco_churn_task.toml");
const ROWS: usize = 20_000;

#[test]
fn loading_keeps_the_matrix_and_not_the_text() {
    let task = TaskSpec::from_toml_str(TASK).expect("bundled task");
    // 20,000 rows drawn from the bundled file (seeded), written to a temporary file.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("partner.csv");
    let text_bytes = {
        let source = std::fs::read_to_string(SOURCE).expect("bundled data");
        let mut lines = source.lines();
        let header = lines.next().expect("header");
        let body: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        let mut text = format!("{header}\n");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..ROWS {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(body[(state % body.len() as u64) as usize]);
            text.push('\n');
        }
        std::fs::write(&path, &text).expect("write");
        text.len()
    };

    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let data = Dataset::load_task_csv(&path, &task).expect("loads");
    let (train, test) = data.into_holdout_split(task.holdout_fraction, task.seed);
    let peak = PEAK.load(Ordering::SeqCst) - base;

    assert_eq!(train.len() + test.len(), ROWS);
    let matrix = ROWS * task.schema.feature_count() * 8;
    assert!(
        peak <= 2 * matrix,
        "loading {ROWS} rows ({text_bytes} bytes of CSV) peaked at {peak} bytes of heap, \
         over twice the {matrix}-byte feature matrix"
    );
}
