//! Federation-wide standardisation on the telco partners.

mod common;

use consortia_model::{Dataset, FeatureStats, Standardizer};

#[test]
fn merged_partner_stats_standardise_the_pooled_rows() {
    let task = common::telco_task();
    let dir = tempfile::tempdir().unwrap();
    let partners = common::telco_partners(&task, dir.path());
    let standardizer = common::federated_standardizer(&partners);

    let trains: Vec<&Dataset> = partners.iter().map(|p| &p.train).collect();
    let pooled = Dataset::concat(&trains).unwrap();
    let direct = Standardizer::from_stats(&pooled.feature_stats()).unwrap();
    for (a, b) in standardizer.mean().iter().zip(direct.mean()) {
        assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()));
    }
    for (a, b) in standardizer.std().iter().zip(direct.std()) {
        assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()));
    }
    let z = standardizer.apply(&pooled).unwrap();
    for j in 0..z.ncols() {
        let col = z.column(j);
        let mean = col.mean().unwrap();
        let var = col.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
        assert!(mean.abs() < 1e-9, "feature {j} mean {mean}");
        assert!((var - 1.0).abs() < 1e-9, "feature {j} variance {var}");
    }
    // Within one partner, its contract one-hot columns are constant.
    let month = standardizer.apply(&partners[0].train).unwrap();
    let contract = task
        .schema
        .feature_names()
        .iter()
        .position(|n| n == "contract=Month-to-month")
        .unwrap();
    assert!(month.column(contract).iter().all(|v| *v > 0.0));

    // Wire forms round-trip and are checked on the way in.
    // (serde_json's default float parsing may differ in the last bit.)
    let json = serde_json::to_string(&standardizer).unwrap();
    let back: Standardizer = serde_json::from_str(&json).unwrap();
    for (a, b) in back.std().iter().zip(standardizer.std()) {
        assert!((a - b).abs() <= 1e-12 * b.abs());
    }
    assert!(serde_json::from_str::<Standardizer>(r#"{"mean":[0.0],"std":[0.0]}"#).is_err());
    assert!(serde_json::from_str::<Standardizer>(r#"{"mean":[0.0,1.0],"std":[1.0]}"#).is_err());
    let stats: FeatureStats =
        serde_json::from_str(&serde_json::to_string(&pooled.feature_stats()).unwrap()).unwrap();
    assert_eq!(stats.count, pooled.len() as u64);
}
