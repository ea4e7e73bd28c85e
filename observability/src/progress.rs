//! Progress that people see: a single updating line on standard error when it is a
//! terminal, log events otherwise (a file, a pipe, a log collector).
//!
//! Two kinds of progress:
//!
//! * a federated round, from the agent's or the demo's side ([`RoundProgress`]):
//!   `round 3 of 10 · training · 42 s left`; on a terminal the time left counts down
//!   every second; otherwise each change of round or phase is one `info` event with
//!   the fields `round`, `rounds`, `phase` and `seconds_left`;
//! * a long count ([`Counter`]): `issuing certificates: 120 of 500 (24 %)`; on a
//!   terminal redrawn at most ten times a second, otherwise one `info` event every
//!   [`Counter::new`]'s `every` items or every second, whichever comes first.
//!
//! Log events written while a line is drawn erase it first and draw it again after
//! ([`crate::logging`]), so the two never mix on one line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Erase the current terminal line and return to its start.
const ERASE: &str = "\r\x1b[2K";

/// Whether standard error is a terminal (checked once).
pub fn on_terminal() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stderr().is_terminal())
}

/// What is drawn now.
#[derive(Default)]
struct Drawn {
    /// The round shown, if any (redrawn every second for its countdown).
    round: Option<RoundProgress>,
    /// The text on the terminal, if any.
    text: Option<String>,
}

fn drawn() -> MutexGuard<'static, Drawn> {
    static DRAWN: OnceLock<Mutex<Drawn>> = OnceLock::new();
    DRAWN
        .get_or_init(|| Mutex::new(Drawn::default()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn draw(d: &mut Drawn, text: String) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{ERASE}{text}");
    let _ = err.flush();
    d.text = Some(text);
}

/// Runs `write` (one log event) with the progress line erased, and draws the line
/// again after it.
pub(crate) fn around<T>(write: impl FnOnce() -> T) -> T {
    let d = drawn();
    let Some(text) = d.text.as_deref() else {
        return write();
    };
    {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{ERASE}");
        let _ = err.flush();
    }
    let out = write();
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
    out
}

/// Prints `line` on standard output, around the progress line (erased first, drawn
/// again after).
pub fn println(line: &str) {
    around(|| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    });
}

/// Erases the progress line, if one is drawn (call it before printing results).
pub fn clear() {
    let mut d = drawn();
    if d.text.take().is_some() {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{ERASE}");
        let _ = err.flush();
    }
    d.round = None;
}

/// Where a federated round is, as its progress line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundProgress {
    /// The round (1-based).
    pub round: u64,
    /// The task's training rounds (0: unknown). The final evaluation runs as round
    /// `rounds + 1`.
    pub rounds: u64,
    /// The phase, as a stable code (`receiving_model`, `training`, `collection`, …).
    pub phase: &'static str,
    /// The round's deadline, milliseconds since the Unix epoch (0: none known).
    pub deadline_unix_ms: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RoundProgress {
    /// Whole seconds left to the deadline at `now_unix_ms` (rounded up), `None` when
    /// no deadline is known.
    pub fn seconds_left(&self, now_unix_ms: u64) -> Option<u64> {
        (self.deadline_unix_ms > 0).then(|| {
            self.deadline_unix_ms
                .saturating_sub(now_unix_ms)
                .div_ceil(1000)
        })
    }

    /// The progress line at `now_unix_ms`: `round 3 of 10 · training · 42 s left`.
    pub fn line(&self, now_unix_ms: u64) -> String {
        let round = match self.rounds {
            0 => format!("round {}", self.round),
            n if self.round > n => format!("final evaluation (after round {n})"),
            n => format!("round {} of {n}", self.round),
        };
        let phase = self.phase.replace('_', " ");
        match self.seconds_left(now_unix_ms) {
            None => format!("{round} · {phase}"),
            Some(0) => format!("{round} · {phase} · deadline passed"),
            Some(s) => format!("{round} · {phase} · {} left", human_seconds(s)),
        }
    }

    /// Shows this round's progress: the line on a terminal (its countdown redrawn
    /// every second), an `info` event otherwise.
    pub fn show(self) {
        let now = now_unix_ms();
        if !on_terminal() {
            let seconds_left = self.seconds_left(now);
            tracing::info!(
                round = self.round,
                rounds = self.rounds,
                phase = self.phase,
                seconds_left,
                "{}",
                self.line(now)
            );
            return;
        }
        let mut d = drawn();
        let text = self.line(now);
        let ticking = self.deadline_unix_ms > 0;
        d.round = Some(self);
        draw(&mut d, text);
        if ticking {
            start_ticker();
        }
    }
}

/// `42 s`, `3 min 05 s`, `1 h 02 min`.
fn human_seconds(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// Redraws the round's line every second while one with a deadline is shown; ends
/// when the line is cleared or replaced by one without a deadline.
fn start_ticker() {
    static TICKING: AtomicBool = AtomicBool::new(false);
    if TICKING.swap(true, Ordering::SeqCst) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("progress".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let mut d = drawn();
                let Some(round) = d.round.clone().filter(|r| r.deadline_unix_ms > 0) else {
                    TICKING.store(false, Ordering::SeqCst);
                    return;
                };
                draw(&mut d, round.line(now_unix_ms()));
            }
        });
    if spawned.is_err() {
        TICKING.store(false, Ordering::SeqCst);
    }
}

/// `issuing certificates: 120 of 500 (24 %)`, or `reading entries: 120` when the
/// total is not known.
pub fn count_line(what: &str, done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => format!(
            "{what}: {done} of {total} ({} %)",
            done.min(total) * 100 / total
        ),
        Some(total) => format!("{what}: {done} of {total}"),
        None => format!("{what}: {done}"),
    }
}

/// Progress through a long count of items.
#[derive(Debug)]
pub struct Counter {
    what: &'static str,
    total: Option<u64>,
    every: u64,
    done: u64,
    reported: u64,
    last: Instant,
}

impl Counter {
    /// A count of `total` items (if known) described as `what` (`issuing
    /// certificates`), reported as an event every `every` items or every second.
    pub fn new(what: &'static str, total: Option<u64>, every: u64) -> Self {
        Counter {
            what,
            total,
            every: every.max(1),
            done: 0,
            reported: 0,
            last: Instant::now(),
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// `n` more items are done.
    pub fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// `done` items are done in all.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        let since = self.last.elapsed();
        if on_terminal() {
            if since >= Duration::from_millis(100) {
                self.last = Instant::now();
                draw(&mut drawn(), count_line(self.what, done, self.total));
            }
        } else if done >= self.reported + self.every || since >= Duration::from_secs(1) {
            self.report();
        }
    }

    fn report(&mut self) {
        self.last = Instant::now();
        self.reported = self.done;
        tracing::info!(
            done = self.done,
            total = self.total,
            "{}",
            count_line(self.what, self.done, self.total)
        );
    }

    /// The count is complete: erases the line on a terminal; otherwise reports the
    /// final count if it was not the last one reported.
    pub fn finish(mut self) {
        if on_terminal() {
            clear();
        } else if self.done != self.reported {
            self.report();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(round: u64, rounds: u64, phase: &'static str, deadline: u64) -> RoundProgress {
        RoundProgress {
            round,
            rounds,
            phase,
            deadline_unix_ms: deadline,
        }
    }

    #[test]
    fn a_round_line_says_round_phase_and_time_left() {
        let now = 1_000_000;
        assert_eq!(
            at(3, 10, "training", now + 41_200).line(now),
            "round 3 of 10 · training · 42 s left"
        );
        assert_eq!(
            at(1, 5, "receiving_model", now + 185_000).line(now),
            "round 1 of 5 · receiving model · 3 min 05 s left"
        );
        assert_eq!(
            at(2, 5, "collection", now + 2 * 3_600_000 + 120_000).line(now),
            "round 2 of 5 · collection · 2 h 02 min left"
        );
        assert_eq!(
            at(2, 5, "waiting", now - 1).line(now),
            "round 2 of 5 · waiting · deadline passed"
        );
        assert_eq!(at(4, 0, "decrypting", 0).line(now), "round 4 · decrypting");
        assert_eq!(
            at(6, 5, "evaluating", 0).line(now),
            "final evaluation (after round 5) · evaluating"
        );
    }

    #[test]
    fn seconds_left_round_up_and_stop_at_zero() {
        let r = at(1, 1, "training", 10_001);
        assert_eq!(r.seconds_left(9_000), Some(2));
        assert_eq!(r.seconds_left(10_001), Some(0));
        assert_eq!(r.seconds_left(20_000), Some(0));
        assert_eq!(at(1, 1, "training", 0).seconds_left(5), None);
    }

    #[test]
    fn count_lines() {
        assert_eq!(
            count_line("issuing certificates", 120, Some(500)),
            "issuing certificates: 120 of 500 (24 %)"
        );
        assert_eq!(count_line("reading entries", 7, None), "reading entries: 7");
        assert_eq!(count_line("x", 3, Some(0)), "x: 3 of 0");
        assert_eq!(count_line("x", 9, Some(4)), "x: 9 of 4 (100 %)");
    }
}
