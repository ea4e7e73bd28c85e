//! The RDP accountant against reference values of Google's `dp_accounting` 0.6.0
//! (`tests/data/dp_accounting_reference.csv`, columns
//! `mechanism,sampling_rate,noise_multiplier,steps_or_rho,delta,rdp_epsilon,pld_epsilon`):
//!
//! * `gaussian`: `steps_or_rho` Gaussian steps (no sampling) with the given noise multiplier;
//! * `poisson_gaussian`: `steps_or_rho` Poisson-subsampled Gaussian steps;
//! * `zcdp`: one `ZCDpEvent` with ρ = `steps_or_rho`.
//!
//! Every row must agree within 0.5 % relative, and ours may never be lower than the reference by
//! more than that (a lower ε would under-report the privacy loss).

use consortia_privacy::dp::{DpEvent, RdpAccountant};

const TOLERANCE: f64 = 0.005;

struct Row {
    mechanism: String,
    q: f64,
    z: f64,
    steps_or_rho: f64,
    delta: f64,
    rdp_epsilon: f64,
}

fn rows() -> Vec<Row> {
    let text = include_str!("data/dp_accounting_reference.csv");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert_eq!(
        header,
        "mechanism,sampling_rate,noise_multiplier,steps_or_rho,delta,rdp_epsilon,pld_epsilon"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 7, "row {l}");
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
            }
        })
        .collect()
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

#[test]
fn every_reference_row_within_half_a_percent() {
    let rows = rows();
    assert_eq!(rows.len(), 140);
    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for row in &rows {
        let got = ours(row);
        let rel = (got - row.rdp_epsilon) / row.rdp_epsilon;
        if rel.abs() > worst.0 {
            worst = (
                rel.abs(),
                format!(
                    "{} q={} z={} n={} delta={}: ours {got} ref {}",
                    row.mechanism, row.q, row.z, row.steps_or_rho, row.delta, row.rdp_epsilon
                ),
            );
        }
        if rel.abs() > TOLERANCE {
            failures.push(format!(
                "{} q={} z={} n={} delta={}: ours {got}, reference {}, rel {rel:+.5}",
                row.mechanism, row.q, row.z, row.steps_or_rho, row.delta, row.rdp_epsilon
            ));
        }
    }
    eprintln!("max relative error {:.3e} at {}", worst.0, worst.1);
    assert!(
        failures.is_empty(),
        "{} rows off:\n{}",
        failures.len(),
        failures.join("\n")
    );
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
