//! The RDP accountant against reference values of Google's `dp_accounting` 0.6.0
//! (`tests/data/dp_accounting_reference.csv`, the project's shared reference file, columns
//! `mechanism,sampling_rate,noise_multiplier,steps_or_rho,delta,rdp_epsilon,pld_epsilon`):
//!
//! * `gaussian`: `steps_or_rho` Gaussian steps (no sampling) with the given noise multiplier;
//! * `poisson_gaussian`: `steps_or_rho` Poisson-subsampled Gaussian steps;
//! * `zcdp`: one `ZCDpEvent` with ρ = `steps_or_rho`.
//!
//! The comparison is one-sided: our ε must never be below `dp_accounting`'s by more than
//! [`BELOW`] = 1e-9 (absolute; float rounding only) — a lower ε would under-report the privacy
//! loss — and may exceed it by at most [`ABOVE`] = 0.5 % relative (the agreement the accountant
//! has always been held to; a conservative accountant may be that much looser).
//!
//! The shared file prints 10 significant digits, so a value `v` there only says that
//! `dp_accounting`'s ε lies within half a unit `u` of its last digit (up to 5e-8 at ε ≈ 1000).
//! The 1e-9 bound is therefore checked against `tests/data/dp_accounting_reference_full.csv`,
//! the same rows recomputed with `dp_accounting` 0.6.0 at full double precision
//! (`tests/data/regenerate_dp_accounting_full.py`), which must agree with the shared file to
//! its printed precision; against the shared file itself ours must not fall below `v − u/2`
//! by more than 1e-9.

use consortia_dp::{DpEvent, RdpAccountant};

/// Largest amount by which our ε may fall below `dp_accounting`'s (absolute).
const BELOW: f64 = 1e-9;
/// Largest relative amount by which our ε may exceed `dp_accounting`'s.
const ABOVE: f64 = 0.005;

struct Row {
    mechanism: String,
    q: f64,
    z: f64,
    steps_or_rho: f64,
    delta: f64,
    rdp_epsilon: f64,
    /// Half a unit in the last printed digit of `rdp_epsilon`.
    half_unit: f64,
}

/// Half a unit in the last digit of a decimal `text` such as `971.1532576` or `1.5e-3`.
fn half_unit(text: &str) -> f64 {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().expect(text)),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    0.5 * 10f64.powi(exponent - decimals)
}

fn parse(text: &str, header: &str) -> Vec<Row> {
    let mut lines = text.lines();
    assert_eq!(lines.next().expect("header"), header);
    let columns = header.split(',').count();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), columns, "row {l}");
            let num = |s: &str| {
                if s.is_empty() {
                    f64::NAN
                } else {
                    s.parse::<f64>().expect(s)
                }
            };
            Row {
                mechanism: f[0].to_string(),
                q: num(f[1]),
                z: num(f[2]),
                steps_or_rho: num(f[3]),
                delta: num(f[4]),
                rdp_epsilon: num(f[5]),
                half_unit: half_unit(f[5]),
            }
        })
        .collect()
}

/// The shared reference file (10 significant digits).
fn rows() -> Vec<Row> {
    parse(
        include_str!("data/dp_accounting_reference.csv"),
        "mechanism,sampling_rate,noise_multiplier,steps_or_rho,delta,rdp_epsilon,pld_epsilon",
    )
}

/// The same rows at full double precision.
fn full_rows() -> Vec<Row> {
    parse(
        include_str!("data/dp_accounting_reference_full.csv"),
        "mechanism,sampling_rate,noise_multiplier,steps_or_rho,delta,rdp_epsilon",
    )
}

fn ours(row: &Row) -> f64 {
    let mut acc = RdpAccountant::new();
    let (event, count) = match row.mechanism.as_str() {
        "gaussian" => (
            DpEvent::Gaussian {
                noise_multiplier: row.z,
            },
            row.steps_or_rho as u64,
        ),
        "poisson_gaussian" => (
            DpEvent::PoissonSampledGaussian {
                sampling_rate: row.q,
                noise_multiplier: row.z,
            },
            row.steps_or_rho as u64,
        ),
        "zcdp" => (
            DpEvent::Zcdp {
                rho: row.steps_or_rho,
            },
            1,
        ),
        other => panic!("mechanism {other} in the reference file is not handled"),
    };
    acc.compose(event, count).expect("compose");
    acc.epsilon(row.delta).expect("epsilon")
}

fn describe(row: &Row, got: f64) -> String {
    let diff = got - row.rdp_epsilon;
    format!(
        "{} q={} z={} n={} delta={}: ours {got:.17}, reference {:.17}, diff {diff:+.3e}, rel {:+.3e}",
        row.mechanism,
        row.q,
        row.z,
        row.steps_or_rho,
        row.delta,
        row.rdp_epsilon,
        diff / row.rdp_epsilon
    )
}

/// Checks every row one-sidedly: ours ≥ reference − `slack(row)` − [`BELOW`] and
/// ours ≤ reference·(1 + [`ABOVE`]).
fn check_one_sided(rows: &[Row], slack: impl Fn(&Row) -> f64) {
    assert_eq!(rows.len(), 140);
    let mut worst_above = (f64::NEG_INFINITY, String::new());
    let mut worst_below = (f64::NEG_INFINITY, String::new());
    let mut failures = Vec::new();
    for row in rows {
        let got = ours(row);
        let diff = got - row.rdp_epsilon;
        let rel = diff / row.rdp_epsilon;
        if rel > worst_above.0 {
            worst_above = (rel, describe(row, got));
        }
        if -diff > worst_below.0 {
            worst_below = (-diff, describe(row, got));
        }
        if diff < -(slack(row) + BELOW) {
            failures.push(format!("below the reference: {}", describe(row, got)));
        } else if rel > ABOVE {
            failures.push(format!(
                "more than {ABOVE} above the reference: {}",
                describe(row, got)
            ));
        }
    }
    eprintln!(
        "largest excess (relative) {:.3e}: {}",
        worst_above.0, worst_above.1
    );
    eprintln!(
        "largest shortfall (absolute) {:.3e}: {}",
        worst_below.0, worst_below.1
    );
    assert!(
        failures.is_empty(),
        "{} rows off:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Against `dp_accounting` at full precision: never below by more than 1e-9, at most 0.5 %
/// above.
#[test]
fn never_below_dp_accounting_at_full_precision() {
    check_one_sided(&full_rows(), |_| 0.0);
}

/// Against the shared file: never below its printed value minus half a unit of its last digit
/// (the most `dp_accounting`'s own value can be below it) by more than 1e-9, at most 0.5 % above.
#[test]
fn never_below_the_shared_reference_file() {
    check_one_sided(&rows(), |row| row.half_unit);
}

/// The full-precision file recomputes exactly the shared file's rows: same parameters, and
/// values equal to the shared ones to their printed precision.
#[test]
fn full_precision_file_matches_the_shared_file() {
    let (shared, full) = (rows(), full_rows());
    assert_eq!(shared.len(), full.len());
    for (s, f) in shared.iter().zip(&full) {
        assert_eq!(s.mechanism, f.mechanism);
        for (a, b) in [
            (s.q, f.q),
            (s.z, f.z),
            (s.steps_or_rho, f.steps_or_rho),
            (s.delta, f.delta),
        ] {
            assert!(a == b || (a.is_nan() && b.is_nan()), "{a} vs {b}");
        }
        assert!(
            (s.rdp_epsilon - f.rdp_epsilon).abs() <= s.half_unit * (1.0 + 1e-9),
            "{}: shared {} vs full {}",
            s.mechanism,
            s.rdp_epsilon,
            f.rdp_epsilon
        );
    }
    assert!((half_unit("971.1532576") / 0.5e-7 - 1.0).abs() < 1e-12);
    assert!((half_unit("1.5e-3") / 0.5e-4 - 1.0).abs() < 1e-12);
}

#[test]
fn reference_file_has_the_three_mechanisms() {
    let rows = rows();
    for m in ["gaussian", "poisson_gaussian", "zcdp"] {
        assert!(rows.iter().any(|r| r.mechanism == m), "{m} missing");
    }
}

/// OpenDP's zCDP conversion (continuous α) is a valid bound never above the grid figure, and
/// close to it.
#[test]
fn opendp_zcdp_conversion_is_tighter_but_close() {
    for row in rows().iter().filter(|r| r.mechanism != "poisson_gaussian") {
        let mut acc = RdpAccountant::new();
        let event = if row.mechanism == "zcdp" {
            (
                DpEvent::Zcdp {
                    rho: row.steps_or_rho,
                },
                1,
            )
        } else {
            (
                DpEvent::Gaussian {
                    noise_multiplier: row.z,
                },
                row.steps_or_rho as u64,
            )
        };
        acc.compose(event.0, event.1).expect("compose");
        let opendp = acc
            .zcdp_epsilon(row.delta)
            .expect("convert")
            .expect("zCDP ledger");
        let grid = acc.epsilon(row.delta).expect("epsilon");
        assert!(opendp <= grid * (1.0 + 1e-9), "{opendp} > {grid}");
        assert!(opendp > 0.9 * grid, "{opendp} vs {grid}");
    }
}
