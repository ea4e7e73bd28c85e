//! `[privacy]` parsing, validation messages, per-partner budgets and the plan check.

use consortia_dp::{
    AccountantKind, Budget, DdgParams, DpError, DpEvent, NoisePlacement, PartnerBudget,
    PrivacySpec, PrivacyUnit, RdpAccountant, check_plan, epsilon_after, plan_epsilon,
    plan_epsilon_with, zcdp_epsilon,
};

#[derive(serde::Deserialize)]
struct TaskFile {
    privacy: PrivacySpec,
}

fn parse(toml_text: &str) -> Result<PrivacySpec, toml::de::Error> {
    toml::from_str::<TaskFile>(toml_text).map(|t| t.privacy)
}

fn record_spec() -> PrivacySpec {
    parse(
        r#"
        [privacy]
        epsilon = 3.0
        delta = 1e-6
        clip_norm = 1.0
        noise_multiplier = 1.0
        sampling_rate = 0.01
        steps_per_round = 10
        "#,
    )
    .unwrap()
}

#[test]
fn defaults_and_full_table() {
    let s = record_spec();
    assert_eq!(s.unit, PrivacyUnit::Record);
    assert_eq!(s.placement, NoisePlacement::Local);
    assert_eq!(s.accountant, AccountantKind::Rdp);
    let full = parse(
        r#"
        [privacy]
        unit = "partner"
        placement = "distributed"
        epsilon = 8.0
        delta = 1e-7
        clip_norm = 0.5
        noise_multiplier = 1.2
        accountant = "rdp"
        "#,
    )
    .unwrap();
    assert_eq!(full.unit, PrivacyUnit::Partner);
    assert_eq!(full.placement, NoisePlacement::Distributed);
    assert_eq!(full.accountant, AccountantKind::Rdp);
    assert!(parse("[privacy]\nepsilon = 1.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\nunit = \"user\"").is_err());
    assert!(parse("[privacy]\nepsilon = 1.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\nsigma = 2").is_err());
}

/// Settings that are not implemented are refused when the table is read, naming what was
/// asked for: `accountant = "pld"` (serde names the one accountant there is, `rdp`) and
/// `[privacy.adaptive_clipping]` (an unknown field of a `deny_unknown_fields` table).
#[test]
fn unimplemented_settings_are_refused_by_name() {
    let base = "[privacy]\nepsilon = 1.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\n\
                sampling_rate = 0.01\n";
    let pld = parse(&format!("{base}accountant = \"pld\"\n"))
        .unwrap_err()
        .to_string();
    assert!(pld.contains("pld") && pld.contains("`rdp`"), "{pld}");
    let adaptive = parse(&format!(
        "{base}\n[privacy.adaptive_clipping]\ntarget_quantile = 0.5\nlearning_rate = 0.2\n\
         count_noise_multiplier = 10.0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        adaptive.contains("unknown field `adaptive_clipping`"),
        "{adaptive}"
    );
}

#[test]
fn validation_errors_name_the_figures() {
    let base = record_spec();
    let check = |f: &dyn Fn(&mut PrivacySpec), needle: &str| {
        let mut s = base.clone();
        f(&mut s);
        let e = s.validate_for_rows(1000).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        e
    };
    assert_eq!(
        check(&|s| s.epsilon = 0.0, "epsilon = 0"),
        DpError::InvalidEpsilon(0.0)
    );
    assert_eq!(
        check(&|s| s.epsilon = -1.0, "epsilon = -1"),
        DpError::InvalidEpsilon(-1.0)
    );
    assert_eq!(
        check(&|s| s.delta = 0.0, "delta = 0"),
        DpError::InvalidDelta(0.0)
    );
    assert_eq!(
        check(&|s| s.clip_norm = 0.0, "clip norm = 0"),
        DpError::InvalidClipNorm(0.0)
    );
    assert_eq!(
        check(&|s| s.noise_multiplier = -0.5, "noise multiplier = -0.5"),
        DpError::InvalidNoiseMultiplier(-0.5)
    );
    check(&|s| s.sampling_rate = Some(1.5), "q = 1.5");
    check(&|s| s.sampling_rate = None, "sampling_rate");
    // δ ≥ 1/rows: 1e-3 with 1000 rows.
    let e = check(&|s| s.delta = 1e-3, "1/1000");
    assert!(matches!(e, DpError::DeltaTooLarge { rows: 1000, .. }));
    assert!(base.validate_for_rows(1000).is_ok());
}

#[test]
fn round_events_per_unit() {
    let s = record_spec();
    let ev = s.round_events(5000).unwrap();
    assert_eq!(
        ev,
        vec![(
            DpEvent::PoissonSampledGaussian {
                sampling_rate: 0.01,
                noise_multiplier: 1.0
            },
            10
        )]
    );
    let mut p = s.clone();
    p.unit = PrivacyUnit::Partner;
    p.sampling_rate = None;
    assert_eq!(
        p.round_events(5000).unwrap(),
        vec![(
            DpEvent::Gaussian {
                noise_multiplier: 1.0
            },
            1
        )]
    );
    // Partner unit does not accept a sampling rate (no amplification claimed).
    let mut bad = p.clone();
    bad.sampling_rate = Some(0.1);
    assert!(matches!(
        bad.round_events(5000),
        Err(DpError::Unsupported(_))
    ));
    // Distributed: charged from the DDG parameters.
    let mut d = p.clone();
    d.placement = NoisePlacement::Distributed;
    assert!(d.round_events(5000).is_err());
    let ddg = DdgParams::calibrate(64, 1.0, 1.0, 5, 5, 20).unwrap();
    let ev = d.round_events_distributed(&ddg).unwrap();
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0].0, DpEvent::Zcdp { rho } if rho >= 0.5));
    assert!(plan_epsilon_with(&d, &ev, 10).unwrap() > zcdp_epsilon(5.0, 1e-6).unwrap() * 0.999);
    // Calibrated from the update length and n_min: z = 1 split over n_min = 3 shares gives
    // ρ = (C/γ + √d')²/(2·n_min·σ_local²) = ((2^16 + 8)/2^16)²/2 ≈ 0.500122 (τ ≈ 0 at σ ≈ 37,800).
    let shaped = d.clone().with_distributed_shape(41, 3, 0).unwrap();
    let ev = shaped.round_events(5000).unwrap();
    let expected = ((65536.0f64 + 8.0) / 65536.0).powi(2) / 2.0;
    assert!(
        matches!(ev[0].0, DpEvent::Zcdp { rho } if (rho - expected).abs() < 1e-9),
        "{ev:?}"
    );
    // The record unit runs distributed as one full-batch step per round: no sampling rate.
    let mut rec = record_spec();
    rec.placement = NoisePlacement::Distributed;
    assert!(matches!(rec.validate(), Err(DpError::Unsupported(m)) if m.contains("sampling_rate")));
    rec.sampling_rate = None;
    rec.steps_per_round = 1;
    rec.validate().unwrap();
    rec.steps_per_round = 10;
    assert!(
        matches!(rec.validate(), Err(DpError::Unsupported(m)) if m.contains("steps_per_round"))
    );
}

#[test]
fn plan_refuses_what_cannot_finish() {
    let s = record_spec();
    // 100 rounds × 10 steps at q = 0.01, z = 1: ε(1e-6) ≈ 2.44 (reference file row
    // poisson_gaussian 0.01,1.0,1000,1e-06 = 2.436693803) — fits in ε = 3.
    let eps = plan_epsilon(&s, 5000, 100).unwrap();
    assert!((eps - 2.436693803).abs() < 0.005 * 2.436693803, "{eps}");
    let ev = s.round_events(5000).unwrap();
    assert_eq!(check_plan(&s, &ev, 100).unwrap(), eps);
    // 1000 rounds do not fit; the error carries the ε reached and the rounds that fit.
    match check_plan(&s, &ev, 1000) {
        Err(DpError::PlanExceedsBudget {
            epsilon_reached,
            affordable_rounds,
            ..
        }) => {
            assert!(epsilon_reached > 3.0);
            assert!((100..1000).contains(&affordable_rounds));
            assert!(plan_epsilon(&s, 5000, affordable_rounds).unwrap() <= 3.0);
            assert!(plan_epsilon(&s, 5000, affordable_rounds + 1).unwrap() > 3.0);
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    let msg = check_plan(&s, &ev, 1000).unwrap_err().to_string();
    assert!(
        msg.contains("planned 1000 rounds") && msg.contains("budget is epsilon = 3"),
        "{msg}"
    );
}

#[test]
fn partner_budget_spends_until_refused() {
    let mut b = PartnerBudget::new(Budget::new(2.0, 1e-5).unwrap()).unwrap();
    assert_eq!(b.spent_epsilon().unwrap(), 0.0);
    let round = [(
        DpEvent::Gaussian {
            noise_multiplier: 5.0,
        },
        1,
    )];
    let mut rounds = 0;
    loop {
        let predicted = b.cost_if(&round).unwrap();
        if b.would_exceed(&round).unwrap() {
            assert!(predicted > 2.0);
            let before = b.clone();
            assert!(matches!(
                b.spend(&round),
                Err(DpError::BudgetExceeded { .. })
            ));
            assert_eq!(b, before, "a refused round must not be spent");
            break;
        }
        let after = b.spend(&round).unwrap();
        assert_eq!(after, predicted);
        rounds += 1;
        assert!(rounds < 1000);
    }
    // Gaussian z = 5 is 0.02-zCDP per round; ε(1e-5) ≤ 2 allows ≈ 8 rounds.
    assert!((5..=12).contains(&rounds), "{rounds}");
    assert_eq!(
        b.ledger(),
        &[(
            DpEvent::Gaussian {
                noise_multiplier: 5.0
            },
            rounds
        )]
    );
    assert_eq!(
        PartnerBudget::new(Budget {
            epsilon: 0.0,
            delta: 1e-6
        }),
        Err(DpError::InvalidEpsilon(0.0))
    );
}

#[test]
fn heterogeneous_composition() {
    // Gaussian z = 1 (ρ = 0.5) then ρ = 0.5 → ρ = 1: reference zcdp row 1.0 @ 1e-5 = 7.077391578.
    let mut a = RdpAccountant::new();
    a.compose(
        DpEvent::Gaussian {
            noise_multiplier: 1.0,
        },
        1,
    )
    .unwrap()
    .compose(DpEvent::Zcdp { rho: 0.5 }, 1)
    .unwrap();
    assert_eq!(a.zcdp_rho(), Some(1.0));
    let e = a.epsilon(1e-5).unwrap();
    assert!((e - 7.077391578).abs() < 0.005 * 7.077391578, "{e}");
    // A subsampled event mixes in: ε exceeds both parts alone.
    let sub = DpEvent::PoissonSampledGaussian {
        sampling_rate: 0.05,
        noise_multiplier: 1.0,
    };
    a.compose(sub, 100).unwrap();
    assert_eq!(a.zcdp_rho(), None);
    let mixed = a.epsilon(1e-5).unwrap();
    assert!(mixed > e && mixed > epsilon_after(0.05, 1.0, 100, 1e-5).unwrap());
    // q = 1 is the plain Gaussian.
    let e1 = epsilon_after(1.0, 2.0, 10, 1e-5).unwrap();
    assert!((e1 - 8.079406222).abs() < 0.005 * 8.079406222, "{e1}");
}
