//! The MLP on the IBM telco churn data: the example task file, `model.hidden`
//! validation, and the quality of FedAvg across three partners split by contract.

mod common;

use std::path::Path;

use common::*;
use consortia_model::task::MAX_MODEL_PARAMS;
use consortia_model::{Dataset, ModelKind, TaskError, TaskSpec};

fn mlp_example() -> TaskSpec {
    TaskSpec::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/telco_churn_mlp.toml"))
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The example with `[model]` replaced by `model`, as TOML.
fn with_model(model: &str) -> String {
    let text = mlp_example().to_toml_string().unwrap();
    let start = text.find("[model]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    format!("{}{model}{}", &text[..start], &text[end..])
}

fn hidden_error(model: &str) -> String {
    match TaskSpec::from_toml_str(&with_model(model)) {
        Err(TaskError::Invalid { field, .. }) => {
            assert_eq!(field.field, "model.hidden", "{model}");
            field.to_string()
        }
        other => panic!("{model}: expected model.hidden to be refused, got {other:?}"),
    }
}

#[test]
fn mlp_task_file_parses_and_hidden_is_validated() {
    let task = mlp_example();
    assert_eq!(task.model.kind, ModelKind::Mlp);
    assert_eq!(task.model.hidden, [16]);
    let features = task.schema.feature_count();
    assert_eq!(features, 40);
    // 40 × 16 weights and 16 biases, then 16 weights and 1 bias.
    assert_eq!(task.param_count(), 673);
    let model = consortia_model::initial_model(&task).unwrap();
    assert_eq!(model.param_count(), 673);
    assert_eq!(model.kind(), ModelKind::Mlp);
    // Random, and the same for everyone who builds it from the task.
    assert!(model.params().iter().any(|v| *v != 0.0));
    assert_eq!(
        consortia_model::initial_model(&task).unwrap().params(),
        model.params()
    );
    let text = task.to_toml_string().unwrap();
    assert!(text.contains("kind = \"mlp\"") && text.contains("hidden = [16]"));
    assert_eq!(TaskSpec::from_toml_str(&text).unwrap(), task);

    assert!(
        TaskSpec::from_toml_str(&with_model("[model]\nkind = \"mlp\"\nhidden = [64, 32]")).is_ok()
    );
    let e = hidden_error("[model]\nkind = \"mlp\"");
    assert!(e.contains("1 to 2 hidden layer"), "{e}");
    hidden_error("[model]\nkind = \"mlp\"\nhidden = []");
    hidden_error("[model]\nkind = \"mlp\"\nhidden = [8, 8, 8]");
    let e = hidden_error("[model]\nkind = \"mlp\"\nhidden = [16, 0]");
    assert!(e.contains("between 1 and 1024"), "{e}");
    hidden_error("[model]\nkind = \"mlp\"\nhidden = [1025]");
    let e = hidden_error("[model]\nkind = \"logistic_regression\"\nhidden = [16]");
    assert!(e.contains("logistic_regression"), "{e}");
    let negative = with_model("[model]\nkind = \"mlp\"\nhidden = [-1]");
    assert!(matches!(
        TaskSpec::from_toml_str(&negative),
        Err(TaskError::Parse { .. })
    ));

    // Over the parameter cap: 3000 one-hot features into two layers of 1024.
    let mut wide = mlp_example();
    wide.model.hidden = vec![1024, 1024];
    wide.schema.categorical[0].categories = (0..3000).map(|i| format!("c{i}")).collect();
    let err = wide.validate().unwrap_err();
    assert_eq!(err.field, "model.hidden");
    assert!(
        err.to_string().contains(&MAX_MODEL_PARAMS.to_string()),
        "{err}"
    );
}

/// `hidden` is left out of a logistic task's canonical form, so a task written
/// before the MLP existed keeps the hash partners pinned it by. The value is the
/// hash of tests/data/telco_task.toml computed before `hidden` was added.
#[test]
fn logistic_tasks_hash_as_before() {
    let task = telco_task();
    assert!(task.model.hidden.is_empty());
    assert_eq!(task.param_count(), task.schema.feature_count() + 1);
    let text = task.to_toml_string().unwrap();
    assert!(!text.contains("hidden"), "{text}");
    assert_eq!(
        hex(&task.canonical_hash().unwrap()),
        "ced7961678b0964b316531a99261d587efc174fb74cdf25c33da9719de500731"
    );
    let mut mlp = task.clone();
    mlp.model.kind = ModelKind::Mlp;
    mlp.model.hidden = vec![16];
    assert_ne!(
        mlp.canonical_hash().unwrap(),
        task.canonical_hash().unwrap()
    );
}

/// The example task, run as an in-process federation (federation-wide
/// standardisation, then FedAvg over the three contract partners, 20 rounds of 2
/// local epochs), against logistic regression with the same settings.
///
/// Measured when this test was written: the MLP reaches a pooled ROC-AUC of 0.831
/// (0.826–0.834 over six other initialisation and shuffling seeds at 10 rounds,
/// 0.830–0.835 at [32] and 20 rounds), logistic regression 0.837; on these features
/// churn is close to linear, so the MLP has nothing to gain. The bars leave a margin
/// of about 0.03: ROC-AUC ≥ 0.80, and within 0.03 of logistic regression.
#[test]
fn federated_mlp_reaches_reference_auc() {
    let task = mlp_example();
    let dir = tempfile::tempdir().unwrap();
    let partners = telco_partners(&task, dir.path());
    let tests: Vec<&Dataset> = partners.iter().map(|p| &p.test).collect();
    let standardizer = federated_standardizer(&partners);
    let cfg = task.train_config();

    let started = std::time::Instant::now();
    let initial = consortia_model::initial_model(&task).unwrap();
    let mlp = fedavg_from(
        initial,
        &partners,
        &standardizer,
        &cfg,
        task.rounds,
        task.seed,
    );
    let mlp_time = started.elapsed();
    let mlp = pooled_metrics(mlp.as_ref(), &standardizer, &tests);

    let mut logistic_task = task.clone();
    logistic_task.model.kind = ModelKind::LogisticRegression;
    logistic_task.model.hidden.clear();
    let initial = consortia_model::initial_model(&logistic_task).unwrap();
    let logistic = fedavg_from(
        initial,
        &partners,
        &standardizer,
        &cfg,
        task.rounds,
        task.seed,
    );
    let logistic = pooled_metrics(logistic.as_ref(), &standardizer, &tests);

    println!("mlp {:?} ({mlp_time:.2?}): {mlp:?}", task.model.hidden);
    println!("logistic regression: {logistic:?}");
    assert!(mlp.roc_auc >= 0.80, "MLP ROC-AUC {:.4} < 0.80", mlp.roc_auc);
    assert!(
        mlp.roc_auc >= logistic.roc_auc - 0.03,
        "MLP ROC-AUC {:.4} vs logistic regression {:.4}",
        mlp.roc_auc,
        logistic.roc_auc
    );
    assert!(mlp.accuracy >= 0.77, "accuracy {}", mlp.accuracy);
    assert!(mlp.log_loss <= 0.46, "log-loss {}", mlp.log_loss);
}
