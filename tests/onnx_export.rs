//! `consortia model export` writes an ONNX file beside its JSON for logistic
//! regression, the MLP and the GLM; run with tract (a Rust ONNX runtime) on a CSV's
//! encoded rows, it scores like `consortia score` to 1e-6.
//!
//! The federation tests train each model for two rounds with the real binaries; the
//! in-process test exports models with random parameters through the same
//! [`consortia_model::onnx::to_onnx`] and checks rows far out in the tails (saturated
//! sigmoids, a GLM's clamped linear predictor) against `Model::predict`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{CLV_DATA, CLV_TASK, EXE, Federation, PERMISSIVE_POLICY, TASK};
use consortia_model::{Standardizer, TaskSpec};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tract_onnx::prelude::*;

/// The agreement the issue asks for between the ONNX file and `consortia score`.
/// Both compute in f64, so they differ by rounding only (summation order in the
/// matrix products); the tests also report the largest difference seen.
const TOLERANCE: f64 = 1e-6;

fn consortia(args: &[&str]) -> std::process::Output {
    Command::new(EXE)
        .args(args)
        .output()
        .expect("run consortia")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the ONNX model at `path` on `features` (`[n, d]`, encoded, unstandardised)
/// with tract and returns the `score` output.
fn run_onnx(path: &Path, features: &ndarray::Array2<f64>) -> Vec<f64> {
    let (n, d) = features.dim();
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .expect("tract reads the ONNX file")
        .with_input_fact(0, f64::fact([n, d]).into())
        .expect("input fact")
        .into_optimized()
        .expect("optimise")
        .into_runnable()
        .expect("runnable");
    let input = tract_ndarray::Array2::from_shape_vec((n, d), features.iter().copied().collect())
        .expect("shape");
    let out = model
        .run(tvec!(Tensor::from(input).into_tvalue()))
        .expect("run");
    let view = out[0].to_plain_array_view::<f64>().expect("DOUBLE output");
    assert_eq!(view.shape(), [n], "one score per row");
    view.iter().copied().collect()
}

/// The `metadata_props` of an ONNX file, read with tract's own protobuf types.
fn onnx_metadata(path: &Path) -> Vec<(String, String)> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .expect("tract parses the protobuf");
    assert_eq!(proto.ir_version, 7);
    assert_eq!(proto.opset_import[0].version, 13);
    proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// Largest absolute difference between two score lists of the same length.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Trains `task_toml` for its rounds over `fed`, exports the model, scores the first
/// partner's CSV with `consortia score`, runs the ONNX file on the same CSV's encoded
/// rows, and checks they agree; returns the largest difference.
fn export_and_compare(mut fed: Federation, expected_kind: &str) -> f64 {
    fed.run_to_completion(Duration::from_secs(300));
    let json = fed.path("model.json");
    let out = consortia(&[
        "model",
        "export",
        "--state",
        fed.path("state").to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let onnx = fed.path("model.onnx");
    assert!(
        text(&out).contains(&format!("ONNX model written to {}", onnx.display())),
        "{}",
        text(&out)
    );

    let data = fed.partners[0].1.clone();
    let scores = fed.path("scores.csv");
    let out = consortia(&[
        "score",
        "--model",
        json.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&scores).unwrap();
    let scored: Vec<f64> = written
        .lines()
        .skip(1)
        .map(|l| l.split_once(',').unwrap().1.parse().unwrap())
        .collect();

    let task = TaskSpec::load(fed.path("task.toml")).unwrap();
    let rows = consortia_model::Dataset::load_for_scoring(&data, &task.schema, None).unwrap();
    let onnx_scores = run_onnx(&onnx, &rows.features);
    assert!(scored.len() > 100, "{} rows scored", scored.len());
    let diff = max_diff(&onnx_scores, &scored);
    println!(
        "{expected_kind}: {} rows, largest |ONNX − consortia score| = {diff:e}",
        scored.len()
    );
    assert!(
        diff <= TOLERANCE,
        "ONNX and consortia score differ by {diff}"
    );
    // Not a constant model: two rounds moved the scores apart.
    let spread = scored.iter().copied().fold(f64::MIN, f64::max)
        - scored.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread > 1e-3, "scores spread only {spread}");

    let meta = onnx_metadata(&onnx);
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("metadata {k} in {meta:?}"))
    };
    assert_eq!(get("task"), task.name);
    assert_eq!(
        get("task_hash"),
        hex::encode(task.canonical_hash().unwrap())
    );
    assert_eq!(get("kind"), expected_kind);
    assert_eq!(
        get("features"),
        serde_json::to_string(&task.schema.feature_names()).unwrap()
    );
    diff
}

/// The bundled task `toml` with `rounds` rounds and a short deadline.
fn short(toml: &str, rounds: u32) -> String {
    let mut spec = TaskSpec::from_toml_str(toml).expect("bundled task parses");
    spec.rounds = rounds;
    spec.round_deadline_secs = 60;
    spec.to_toml_string().expect("task serialises")
}

fn admit(fed: &Federation, kind: &str) {
    std::fs::write(
        fed.path("policy.toml"),
        format!("{PERMISSIVE_POLICY}allowed_models = [\"{kind}\"]\n"),
    )
    .expect("policy");
}

#[test]
fn logistic_regression_onnx_scores_like_consortia_score() {
    let fed = Federation::new(&short(TASK, 2));
    export_and_compare(fed, "logistic_regression");
}

#[test]
fn mlp_onnx_scores_like_consortia_score() {
    let fed = Federation::new(&short(include_str!("../examples/telco_churn_mlp.toml"), 2));
    admit(&fed, "mlp");
    export_and_compare(fed, "mlp");
}

#[test]
fn glm_onnx_scores_like_consortia_score() {
    let fed = Federation::with_data(&short(CLV_TASK, 2), Path::new(CLV_DATA), "cohort_month");
    admit(&fed, "glm");
    export_and_compare(fed, "glm");
}

/// A task over `d` numeric features with `model` as its `[model]` table.
fn task(d: usize, model: &str, label: &str) -> TaskSpec {
    let names: Vec<String> = (0..d).map(|j| format!("\"x{j}\"")).collect();
    TaskSpec::from_toml_str(&format!(
        "name = \"onnx\"\nrounds = 1\nmin_partners = 1\nround_deadline_secs = 10\n\
         local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\nseed = 7\n{model}\n\
         [schema]\nnumeric = [{}]\n[schema.label]\ncolumn = \"y\"\n{label}",
        names.join(", ")
    ))
    .expect("task")
}

/// Uniform in `[-scale, scale)`.
fn uniform(rng: &mut ChaCha8Rng, scale: f64) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (2.0 * u - 1.0) * scale
}

#[test]
fn in_process_exports_match_predict_in_the_tails() {
    let d = 5;
    let classifier = "positive = \"1\"\nnegative = \"0\"\n";
    let cases = [
        (
            "logistic",
            task(d, "[model]\nkind = \"logistic_regression\"", classifier),
        ),
        (
            "mlp",
            task(d, "[model]\nkind = \"mlp\"\nhidden = [7, 4]", classifier),
        ),
        (
            "tweedie",
            task(
                d,
                "[model]\nkind = \"glm\"\nfamily = \"tweedie\"\npower = 1.5",
                "",
            ),
        ),
        (
            "poisson",
            task(d, "[model]\nkind = \"glm\"\nfamily = \"poisson\"", ""),
        ),
        (
            "gaussian",
            task(d, "[model]\nkind = \"glm\"\nfamily = \"gaussian\"", ""),
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(20261201);
    let dir = tempfile::tempdir().unwrap();
    let st = Standardizer::from_parts(
        (0..d).map(|_| uniform(&mut rng, 10.0)).collect(),
        (0..d)
            .map(|_| 0.1 + uniform(&mut rng, 1.0).abs() * 5.0)
            .collect(),
    )
    .unwrap();
    // Rows from ordinary to extreme: standardised values up to ±2,000, which drives
    // logits past ±700 (exp overflows) and a GLM's η past its ±50 clamp.
    let rows = 200;
    let mut x = ndarray::Array2::<f64>::zeros((rows, d));
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        let scale = [1.0, 10.0, 100.0, 1000.0][i % 4];
        for (j, v) in row.iter_mut().enumerate() {
            *v = st.mean()[j] + uniform(&mut rng, scale) * st.std()[j];
        }
    }
    for (name, task) in &cases {
        let n = consortia_model::initial_model(task).unwrap().param_count();
        let params: Vec<f64> = (0..n).map(|_| uniform(&mut rng, 1.0)).collect();
        let model = consortia_model::model_with_params(task, &params).unwrap();
        let bytes = consortia_model::onnx::to_onnx(task, &params, &st, &[]).unwrap();
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, bytes).unwrap();
        let want = model.predict(&st.apply_features(&x).unwrap()).unwrap();
        let got = run_onnx(&path, &x);
        // Relative for the GLM's large means (exp(50) ≈ 5e21), absolute otherwise.
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= TOLERANCE * w.abs().max(1.0),
                "{name} row {i}: ONNX {g} vs predict {w}"
            );
        }
        println!(
            "{name}: largest difference {:e}",
            max_diff(&got, &want.to_vec())
        );
    }
}

#[test]
fn an_out_path_ending_in_onnx_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let res = consortia(&[
        "model",
        "export",
        "--state",
        dir.path().join("state").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!res.status.success());
    assert!(text(&res).contains("ends in .onnx"), "{}", text(&res));
    assert!(!out.exists());
}
