//! Progress of the command line's long commands, shown with
//! [`consortia_observability::progress`] (a line on a terminal, events otherwise):
//!
//! * `consortia pki init` with many partners: certificates issued so far, counted
//!   in the PKI's `partners/` directory while [`Pki::init`] signs them;
//! * `consortia demo`: the federation's round, phase and time left to the round's
//!   deadline, read from the coordinator's own `/metrics` ([`FederationWatch`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use consortia_observability::progress::{Counter, RoundProgress, now_unix_ms};
use consortia_pki::{Pki, PkiError};

/// From this many partners on, `pki init` reports its progress.
const PKI_PROGRESS_FROM: usize = 50;

/// [`Pki::init`], reporting the certificates issued so far when there are many.
pub(crate) fn pki_init(dir: &Path, hosts: &[String], partners: &[String]) -> Result<Pki, PkiError> {
    if partners.len() < PKI_PROGRESS_FROM {
        return Pki::init(dir, hosts, partners);
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, issued) = (Arc::clone(&done), dir.join("partners"));
        let total = partners.len() as u64;
        std::thread::spawn(move || {
            let mut counter = Counter::new("issuing partner certificates", Some(total), 100);
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                counter.set(count_certificates(&issued));
            }
            counter.set(count_certificates(&issued));
            counter.finish();
        })
    };
    let pki = Pki::init(dir, hosts, partners);
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    pki
}

/// Certificates (`*.pem`) in `dir`.
fn count_certificates(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
            .count() as u64
    })
}

/// Follows a running coordinator's round and phase for `consortia demo`, from its
/// `/metrics` (the address its log names): `consortia_round`, `consortia_task_rounds`
/// and `consortia_phase`, four times a second.
pub(crate) struct FederationWatch {
    log: PathBuf,
    deadline_secs: u64,
    addr: Option<SocketAddr>,
    last_poll: Option<Instant>,
    shown: Option<(u64, String)>,
    round_started_ms: u64,
}

/// What a scrape says.
#[derive(Debug, PartialEq, Eq)]
struct Where {
    round: u64,
    rounds: u64,
    phase: String,
}

impl FederationWatch {
    /// Watches the coordinator whose log is `log`; rounds close `deadline_secs` after
    /// they start.
    pub(crate) fn new(log: PathBuf, deadline_secs: u64) -> Self {
        FederationWatch {
            log,
            deadline_secs,
            addr: None,
            last_poll: None,
            shown: None,
            round_started_ms: 0,
        }
    }

    /// Shows the federation's progress if it changed; scrapes at most every 250 ms.
    pub(crate) fn poll(&mut self) {
        if self
            .last_poll
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last_poll = Some(Instant::now());
        if self.addr.is_none() {
            self.addr = std::fs::read_to_string(&self.log)
                .ok()
                .and_then(|log| metrics_addr(&log));
        }
        let Some(now) = self.addr.and_then(scrape).and_then(|text| parse(&text)) else {
            return;
        };
        if now.round == 0 {
            return;
        }
        let changed = self.shown.as_ref() != Some(&(now.round, now.phase.clone()));
        if self.shown.as_ref().is_none_or(|(r, _)| *r != now.round) {
            self.round_started_ms = now_unix_ms();
        }
        // The deadline bounds a round's collection (the other phases have their own).
        let deadline = if now.phase == "collection" {
            self.round_started_ms + self.deadline_secs * 1000
        } else {
            0
        };
        let progress = RoundProgress {
            round: now.round,
            rounds: now.rounds,
            phase: phase_code(&now.phase),
            deadline_unix_ms: deadline,
        };
        // On a terminal the line's countdown is redrawn every second by itself.
        if changed {
            progress.show();
        }
        self.shown = Some((now.round, now.phase));
    }
}

/// The phase code as a `'static` string (the coordinator's `phase` labels).
fn phase_code(phase: &str) -> &'static str {
    match phase {
        "standardisation" => "standardisation",
        "key_ceremony" => "key_ceremony",
        "collection" => "collection",
        "decryption" => "decryption",
        _ => "idle",
    }
}

/// The metrics address a coordinator's log names (`… metrics listening on
/// http://ADDR/metrics`).
fn metrics_addr(log: &str) -> Option<SocketAddr> {
    let rest = log.split("metrics listening on http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// `GET /metrics` from `addr`, within a second or two.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.take(4 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The round, task rounds and phase in progress from a scrape.
fn parse(text: &str) -> Option<Where> {
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    let phase = text.lines().find_map(|l| {
        let rest = l.strip_prefix("consortia_phase{phase=\"")?;
        let (phase, value) = rest.split_once("\"} ")?;
        (value.trim() == "1").then(|| phase.to_string())
    })?;
    Some(Where {
        round: value("consortia_round")? as u64,
        rounds: value("consortia_task_rounds")? as u64,
        phase,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_round_rounds_and_phase_from_a_scrape() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# HELP consortia_round x\nconsortia_round 3\n\
                    consortia_rounds_started_total 4\nconsortia_task_rounds 10\n\
                    consortia_phase{phase=\"idle\"} 0\nconsortia_phase{phase=\"collection\"} 1\n";
        assert_eq!(
            parse(text),
            Some(Where {
                round: 3,
                rounds: 10,
                phase: "collection".into()
            })
        );
        assert_eq!(parse("consortia_round 3\n"), None);
    }

    #[test]
    fn finds_the_logged_metrics_address() {
        let log = "INFO coordinator metrics listening on http://127.0.0.1:9464/metrics addr=…\n";
        assert_eq!(metrics_addr(log), Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(metrics_addr("nothing"), None);
    }
}
