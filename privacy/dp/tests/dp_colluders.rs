//! Distributed DP against the coordinator plus `t` colluding partners: every
//! partner's noise share has variance σ²/(n_min − t), and a round is charged
//! for the n_min − t shares the coalition cannot subtract, whose sum has the
//! full σ — the charge of one central discrete Gaussian of std σ.

use consortia_dp::ddg::{DdgParams, ddg_round_rho};
#[cfg(feature = "mechanisms")]
use consortia_dp::ddg::{encode, unwrap_signed};
use consortia_dp::{
    DDG_SCALE_BITS, DpError, DpEvent, NoisePlacement, PrivacySpec, PrivacyUnit, RdpAccountant,
    plan_epsilon_with,
};

const DIM: usize = 41;
const ROUNDS: u64 = 20;

fn spec(z: f64) -> PrivacySpec {
    let mut s: PrivacySpec = toml::from_str(
        "unit = \"partner\"\nplacement = \"distributed\"\nepsilon = 100.0\ndelta = 1e-6\nclip_norm = 1.0\nnoise_multiplier = 1.0\n",
    )
    .unwrap();
    s.noise_multiplier = z;
    assert_eq!(s.unit, PrivacyUnit::Partner);
    assert_eq!(s.placement, NoisePlacement::Distributed);
    s
}

/// σ of the whole noise in integer units: z·C/γ = z·2^16.
fn full_sigma(z: f64) -> f64 {
    z * f64::from(1u32 << DDG_SCALE_BITS)
}

fn charged_rho(s: &PrivacySpec) -> f64 {
    let events = s.round_events(1).unwrap();
    assert_eq!(events.len(), 1);
    match events[0] {
        (DpEvent::Zcdp { rho }, 1) => rho,
        ref other => panic!("unexpected event {other:?}"),
    }
}

fn epsilon_of(events: &[(DpEvent, u64)], delta: f64) -> f64 {
    let mut acc = RdpAccountant::new();
    acc.compose_all(events).unwrap();
    acc.repeated(ROUNDS).epsilon(delta).unwrap()
}

#[test]
fn one_colluder_of_three_halves_the_share_and_charges_the_full_sigma() {
    let z = 1.3;
    let sigma = full_sigma(z);
    let s = spec(z).with_distributed_shape(DIM, 3, 1).unwrap();
    let shape = s.distributed_shape.unwrap();
    assert_eq!(
        (shape.n_min, shape.colluders, shape.honest_shares()),
        (3, 1, 2)
    );

    // Each partner's share: variance σ²/(n_min − t) = σ²/2.
    let p = s.ddg_params(DIM, 3, 1, 62).unwrap();
    assert_eq!(p.n_min(), 2, "ρ counts the two honest shares only");
    let share_var = p.local_sigma() * p.local_sigma();
    assert!(
        (share_var / (sigma * sigma / 2.0) - 1.0).abs() < 1e-12,
        "share variance {share_var} vs σ²/2 = {}",
        sigma * sigma / 2.0
    );

    // The charge equals one central discrete Gaussian of the full σ on the same rounded
    // sensitivity Δ₂ = C/γ + √d' (KLS21 Thm 1 with n = 1: τ = 0, ρ = Δ₂²/(2σ²)).
    let central = DdgParams::new(DIM, 1.0, p.gamma(), 0.0, sigma, 1, 62).unwrap();
    assert_eq!(central.tau(), 0.0);
    let delta2 = f64::from(1u32 << DDG_SCALE_BITS) + 64f64.sqrt();
    let rho_central = delta2 * delta2 / (2.0 * sigma * sigma);
    assert!((ddg_round_rho(&central) - rho_central).abs() < 1e-12 * rho_central);
    let rho = charged_rho(&s);
    assert!(
        (rho - rho_central).abs() < 1e-9 * rho_central,
        "charged ρ {rho} vs central {rho_central}"
    );
    let events = s.round_events(1).unwrap();
    let eps = plan_epsilon_with(&s, &events, ROUNDS).unwrap();
    let eps_central = epsilon_of(&[(DpEvent::Zcdp { rho: rho_central }, 1)], s.delta);
    assert!(
        (eps - eps_central).abs() < 1e-9 * eps_central,
        "charged ε {eps} vs central discrete Gaussian ε {eps_central}"
    );
    // (z = 1.3, 20 rounds, δ = 1e-6: ε ≈ 19.2 either way.)
    assert!(eps > 10.0 && eps < 30.0, "{eps}");
}

#[test]
fn no_colluders_is_the_old_calibration() {
    let z = 1.3;
    let sigma = full_sigma(z);
    let s = spec(z).with_distributed_shape(DIM, 3, 0).unwrap();
    let p = s.ddg_params(DIM, 3, 0, 62).unwrap();
    // σ²/n_min per share, and ρ of n_min = 3 shares, exactly as before colluders existed.
    assert_eq!(p.n_min(), 3);
    assert!((p.local_sigma() - sigma / 3f64.sqrt()).abs() < 1e-9 * sigma);
    let old = DdgParams::new(DIM, 1.0, p.gamma(), 0.0, sigma / 3f64.sqrt(), 3, 62).unwrap();
    assert_eq!(charged_rho(&s), ddg_round_rho(&old));
    // The charge does not depend on t: the coalition always faces noise of std σ.
    let one = spec(z).with_distributed_shape(DIM, 3, 1).unwrap();
    assert!((charged_rho(&s) - charged_rho(&one)).abs() < 1e-12);
    // But with t = 1 each share is larger: σ²/2 > σ²/3.
    let p1 = one.ddg_params(DIM, 3, 1, 62).unwrap();
    assert!(p1.local_sigma() > p.local_sigma());
}

#[test]
fn colluders_at_or_above_n_min_are_refused() {
    for (n_min, t) in [(3, 3), (3, 5), (1, 1)] {
        let err = spec(1.0).with_distributed_shape(DIM, n_min, t).unwrap_err();
        assert_eq!(
            err,
            DpError::TooManyColluders {
                colluders: t,
                n_min
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("colluders = {t}")) && msg.contains(&format!("n_min = {n_min}")),
            "{msg}"
        );
        assert_eq!(
            spec(1.0).ddg_params(DIM, n_min, t, 62).unwrap_err(),
            DpError::TooManyColluders {
                colluders: t,
                n_min
            }
        );
    }
    assert!(spec(1.0).with_distributed_shape(DIM, 3, 2).is_ok());
}

/// The noise a partner actually adds has the variance σ²/(n_min − t). A zero update rounds
/// to zero exactly, so each encoded residue is one discrete Gaussian draw. With 8192 draws
/// the sample variance has relative standard deviation sqrt(2/8192) ≈ 1.6 % (the discrete
/// Gaussian's kurtosis is that of the normal to within 1e-9 at σ ≈ 2^15); the test allows
/// ±10 %, over 6 standard deviations, so it fails by chance with probability below 1e-9.
#[cfg(feature = "mechanisms")]
#[test]
fn sampled_share_variance_is_sigma_squared_over_honest_shares() {
    let z = 1.0;
    let sigma = full_sigma(z);
    let s = spec(z).with_distributed_shape(4096, 3, 1).unwrap();
    let p = s.ddg_params(4096, 3, 1, 62).unwrap();
    let mut draws = Vec::new();
    for seed in [[1u8; 32], [2u8; 32]] {
        let residues = encode(&p, &vec![0.0; 4096], &seed).unwrap();
        draws.extend(residues.iter().map(|&r| unwrap_signed(r, 62) as f64));
    }
    assert_eq!(draws.len(), 8192);
    let n = draws.len() as f64;
    let mean = draws.iter().sum::<f64>() / n;
    let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let want = sigma * sigma / 2.0;
    assert!(
        (var / want - 1.0).abs() < 0.10,
        "share variance {var:.4e}, expected σ²/2 = {want:.4e}"
    );
}
