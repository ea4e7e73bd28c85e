//! The update encoding takes the distributed-DP shape, colluders included, from the task's
//! privacy spec: every partner's noise share has variance σ²/(n_min − t) (see
//! `consortia-dp`'s `tests/dp_colluders.rs` for the accounting side).

use consortia_dp::{DDG_SCALE_BITS, DpError, NoisePlacement, PrivacySpec, PrivacyUnit};
use consortia_he::update::UpdateEncoding;

const DIM: usize = 41;

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

#[test]
fn update_encoding_takes_the_colluders_from_the_spec() {
    let unshaped = spec(1.0);
    assert!(matches!(
        UpdateEncoding::ddg(&unshaped, DIM, 3, 44, &[0; 32], 1),
        Err(DpError::Unsupported(_))
    ));
    let s = spec(1.0).with_distributed_shape(DIM, 3, 1).unwrap();
    match UpdateEncoding::ddg(&s, DIM, 3, 44, &[0; 32], 1).unwrap() {
        UpdateEncoding::Ddg { params, .. } => {
            assert_eq!(params.n_min(), 2);
            assert!((params.local_sigma() - full_sigma(1.0) / 2f64.sqrt()).abs() < 1e-6);
        }
        other => panic!("expected a DDG encoding, got {other:?}"),
    }
}
