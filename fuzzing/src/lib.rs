//! The harness the workspace's property-based fuzz tests share
//! (`proto/tests/fuzz_messages.rs`, `ledger/tests/fuzz_entries.rs`,
//! `model/tests/fuzz_inputs.rs`, `privacy/he/tests/fuzz_wire.rs`); a
//! dev-dependency only, never linked into a program:
//!
//! - [`PeakAlloc`], a global allocator that counts the bytes live on the
//!   current thread, and [`peak`], the most bytes a closure held at once. A
//!   fuzz test installs it in its own binary:
//!   `#[global_allocator] static ALLOC: PeakAlloc = PeakAlloc;`
//! - [`fuzz`], a proptest runner with a fixed seed and case count, so that CI
//!   is deterministic (`PROPTEST_CASES` raises the count for a long campaign).
//!
//! What a reader of untrusted bytes may hold (each test's `bound`) and how
//! inputs are mutated depend on the format, and stay in each test.

// A global allocator is unsafe to implement; nothing else here is unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRng, TestRunner};

/// Counts the bytes live on the current thread, and their peak; every
/// allocation goes to [`System`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakAlloc;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grow(n: usize) {
    // `try_with`: a thread's last deallocations run after its locals are gone.
    let _ = LIVE.try_with(|l| {
        let now = l.get().saturating_add(n);
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only thread-local integers.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        shrink(layout.size());
        grow(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f`, and returns its result with the most bytes it had live at once
/// on this thread. Measures something only in a binary whose global
/// allocator is [`PeakAlloc`] (each fuzz test checks that it is).
pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get).saturating_sub(base))
}

/// The runner's configuration: `cases` cases, ChaCha with a fixed seed, no
/// failure persistence (a failure prints its input instead).
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(0x00c0_4507_71a5_f00d),
        ..Config::default()
    }
}

/// Runs `check` on `cases` inputs drawn from `strategy` with the fixed seed
/// (`PROPTEST_CASES` overrides the count); panics with proptest's report,
/// the minimal failing input included, if a case fails.
pub fn fuzz<S: Strategy>(
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let cfg = config(cases);
    let rng = TestRng::from_seed(cfg.rng_algorithm, &[0x5e; 32]);
    let mut runner = TestRunner::new_with_rng(cfg, rng);
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: PeakAlloc = PeakAlloc;

    #[test]
    fn peak_counts_what_a_closure_holds_at_once_not_what_it_freed_before() {
        let (_, used) = peak(|| {
            drop(vec![0u8; 1 << 16]);
            let v = vec![0u8; 1 << 20];
            v.len()
        });
        assert!((1 << 20..(1 << 20) + (1 << 16)).contains(&used), "{used}");
        let (_, nothing) = peak(|| 1 + 1);
        assert!(nothing < 1024, "{nothing}");
    }

    #[test]
    fn fuzz_reports_a_failing_case() {
        let failed = std::panic::catch_unwind(|| {
            fuzz(64, 0u32..1000, |v| {
                if v >= 500 {
                    Err(TestCaseError::fail(format!("{v} too large")))
                } else {
                    Ok(())
                }
            })
        });
        let e = failed.expect_err("a check failing on half the inputs must fail the run");
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("too large"), "{msg}");
    }
}
