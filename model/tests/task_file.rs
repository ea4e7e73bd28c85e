//! Task files: the demo file, defaults, round trips, and field-naming errors.

mod common;

use consortia_model::{MissingPolicy, ModelKind, TaskError, TaskSpec};

const MINIMAL: &str = r#"
name = "t1"
rounds = 3
min_partners = 2
round_deadline_secs = 60
local_epochs = 1
batch_size = 8
learning_rate = 0.1
seed = 7

[model]
kind = "logistic_regression"

[schema]
numeric = ["age"]

[schema.label]
column = "y"
positive = "1"

[[schema.categorical]]
column = "colour"
categories = ["red", "green"]
"#;

fn invalid_field(text: &str) -> (String, String) {
    match TaskSpec::from_toml_str(text) {
        Err(TaskError::Invalid { field, .. }) => (field.field, field.value),
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

fn with(line_before: &str, replacement: &str) -> String {
    assert!(MINIMAL.contains(line_before), "{line_before}");
    MINIMAL.replacen(line_before, replacement, 1)
}

#[test]
fn demo_task_file_is_valid() {
    let task = common::telco_task();
    assert_eq!(task.name, "telco-churn");
    assert_eq!(task.model.kind, ModelKind::LogisticRegression);
    assert_eq!(task.schema.feature_count(), 40);
    assert_eq!(task.param_count(), 41);
    assert_eq!(
        task.schema.missing_policy("total_charges"),
        MissingPolicy::Zero
    );
    assert_eq!(task.schema.missing_policy("tenure"), MissingPolicy::Error);
    let names = task.schema.feature_names();
    assert_eq!(names[0], "female");
    assert_eq!(names[9], "multiple_lines=No");
    assert_eq!(names[39], "payment_method=Credit card (automatic)");
}

#[test]
fn defaults_apply_and_round_trip() {
    let task = TaskSpec::from_toml_str(MINIMAL).unwrap();
    assert_eq!(task.holdout_fraction, 0.2);
    assert!(!task.secure_aggregation);
    assert_eq!(task.sample_fraction, None);
    assert_eq!(task.model.l2, 0.0);
    assert_eq!(task.privacy, None);
    assert_eq!(task.schema.feature_count(), 3);
    let cfg = task.train_config();
    assert_eq!((cfg.epochs, cfg.batch_size, cfg.learning_rate), (1, 8, 0.1));

    let again = TaskSpec::from_toml_str(&task.to_toml_string().unwrap()).unwrap();
    assert_eq!(again, task);
    let demo = common::telco_task();
    assert_eq!(
        TaskSpec::from_toml_str(&demo.to_toml_string().unwrap()).unwrap(),
        demo
    );
}

#[test]
fn privacy_table_is_kept_raw() {
    let text = format!(
        "{MINIMAL}\n[privacy]\nmechanism = \"gaussian\"\nepsilon = 3.0\n[privacy.accountant]\nkind = \"rdp\"\n"
    );
    let task = TaskSpec::from_toml_str(&text).unwrap();
    let privacy = task.privacy.as_ref().unwrap();
    assert_eq!(privacy["mechanism"].as_str(), Some("gaussian"));
    assert_eq!(privacy["epsilon"].as_float(), Some(3.0));
    assert_eq!(privacy["accountant"]["kind"].as_str(), Some("rdp"));
    assert_eq!(
        TaskSpec::from_toml_str(&task.to_toml_string().unwrap()).unwrap(),
        task
    );
}

#[test]
fn unknown_keys_and_model_kinds_are_rejected() {
    let err = TaskSpec::from_toml_str(&format!("colour = \"blue\"\n{MINIMAL}")).unwrap_err();
    assert!(matches!(err, TaskError::Parse { .. }));
    assert!(err.to_string().contains("colour"), "{err}");

    let err = TaskSpec::from_toml_str(&with(
        "kind = \"logistic_regression\"",
        "kind = \"random_forest\"",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("random_forest"), "{err}");

    let err = TaskSpec::from_toml_str(&with("positive = \"1\"", "positive = \"1\"\nweight = 2"))
        .unwrap_err();
    assert!(err.to_string().contains("weight"), "{err}");
}

#[test]
fn out_of_range_fields_are_named_with_their_value() {
    let cases = [
        ("name = \"t1\"", "name = \"../etc\"", "name", "\"../etc\""),
        ("rounds = 3", "rounds = 0", "rounds", "0"),
        ("min_partners = 2", "min_partners = 0", "min_partners", "0"),
        (
            "seed = 7",
            "seed = 7\nsample_fraction = 1.5",
            "sample_fraction",
            "1.5",
        ),
        (
            "seed = 7",
            "seed = 7\nsample_fraction = 0.0",
            "sample_fraction",
            "0.0",
        ),
        (
            "round_deadline_secs = 60",
            "round_deadline_secs = 0",
            "round_deadline_secs",
            "0",
        ),
        ("local_epochs = 1", "local_epochs = 0", "local_epochs", "0"),
        ("batch_size = 8", "batch_size = 0", "batch_size", "0"),
        (
            "learning_rate = 0.1",
            "learning_rate = -0.1",
            "learning_rate",
            "-0.1",
        ),
        (
            "learning_rate = 0.1",
            "learning_rate = nan",
            "learning_rate",
            "NaN",
        ),
        (
            "seed = 7",
            "seed = 7\nholdout_fraction = 1.0",
            "holdout_fraction",
            "1.0",
        ),
        (
            "kind = \"logistic_regression\"",
            "kind = \"logistic_regression\"\nl2 = -1.0",
            "model.l2",
            "-1.0",
        ),
        (
            "numeric = [\"age\"]",
            "numeric = [\"age\", \"y\"]",
            "schema.numeric[1]",
            "\"y\"",
        ),
        (
            "categories = [\"red\", \"green\"]",
            "categories = [\"red\", \"red\"]",
            "schema.categorical[0].categories[1]",
            "\"red\"",
        ),
        (
            "numeric = [\"age\"]",
            "numeric = [\"age\"]\nmissing = { colour = \"zero\" }",
            "schema.missing.colour",
            "\"colour\"",
        ),
    ];
    for (from, to, field, value) in cases {
        let (found_field, found_value) = invalid_field(&with(from, to));
        assert_eq!(
            (found_field.as_str(), found_value.as_str()),
            (field, value),
            "{to}"
        );
    }
    let err = TaskSpec::from_toml_str(&with("rounds = 3", "rounds = 0")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("`rounds`") && message.contains("between 1 and"),
        "{message}"
    );
}

#[test]
fn load_names_the_file_and_limits_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err = TaskSpec::load(&missing).unwrap_err();
    assert!(matches!(err, TaskError::Read { .. }));
    assert!(err.to_string().contains("absent.toml"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, with("rounds = 3", "rounds = 0")).unwrap();
    assert!(
        TaskSpec::load(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad.toml")
    );

    let big = dir.path().join("big.toml");
    std::fs::write(&big, format!("{MINIMAL}\n#{}", "x".repeat(1 << 20))).unwrap();
    assert!(matches!(
        TaskSpec::load(&big),
        Err(TaskError::TooLarge { .. })
    ));
}

/// `[schema.bounds]` parses; under `[privacy]` every numeric column needs bounds, and a
/// refusal names the column.
#[test]
fn bounds_parse_and_a_private_task_needs_them_for_every_numeric_column() {
    let privacy = "\n[privacy]\nepsilon = 3.0\ndelta = 1e-5\nclip_norm = 1.0\n\
                   noise_multiplier = 1.0\nsampling_rate = 0.01\n";
    let with_bounds = format!("{MINIMAL}\n[schema.bounds]\nage = [0, 120]\n{privacy}");
    let task = TaskSpec::from_toml_str(&with_bounds).expect("a private task with bounds");
    assert_eq!(
        task.schema.feature_bounds(),
        Ok(vec![(0.0, 120.0), (0.0, 1.0), (0.0, 1.0)])
    );
    assert!(task.privacy_spec().expect("privacy").is_some());
    let round_trip = TaskSpec::from_toml_str(&task.to_toml_string().unwrap()).unwrap();
    assert_eq!(round_trip.schema.bounds, task.schema.bounds);

    let without = TaskSpec::from_toml_str(&format!("{MINIMAL}{privacy}")).unwrap();
    match without.privacy_spec() {
        Err(TaskError::Privacy(m)) => assert!(m.contains("`age`"), "{m}"),
        other => panic!("expected a refusal naming `age`, got {other:?}"),
    }
    // Without [privacy], bounds are optional.
    assert!(
        TaskSpec::from_toml_str(MINIMAL)
            .unwrap()
            .privacy_spec()
            .unwrap()
            .is_none()
    );

    let (field, _) = invalid_field(&format!("{MINIMAL}\n[schema.bounds]\nincome = [0, 1]\n"));
    assert_eq!(field, "schema.bounds.income");
    let (field, _) = invalid_field(&format!("{MINIMAL}\n[schema.bounds]\nage = [5, 5]\n"));
    assert_eq!(field, "schema.bounds.age");
}

/// Privacy settings that are not implemented are refused when the task's `[privacy]` is read,
/// naming what was asked for: adaptive clipping (the clip norm is fixed) and any accountant
/// other than `rdp`.
#[test]
fn unsupported_privacy_settings_are_refused_by_name() {
    let privacy = "\n[schema.bounds]\nage = [0, 120]\n\n[privacy]\nepsilon = 3.0\n\
                   delta = 1e-5\nclip_norm = 1.0\nnoise_multiplier = 1.0\nsampling_rate = 0.01\n";
    let refusal = |extra: &str| {
        let task = TaskSpec::from_toml_str(&format!("{MINIMAL}{privacy}{extra}"))
            .expect("the raw [privacy] table is read as is");
        match task.privacy_spec() {
            Err(TaskError::Privacy(m)) => m,
            other => panic!("expected a [privacy] refusal, got {other:?}"),
        }
    };
    let adaptive = refusal(
        "\n[privacy.adaptive_clipping]\ntarget_quantile = 0.5\nlearning_rate = 0.2\n\
         count_noise_multiplier = 10.0\n",
    );
    assert!(
        adaptive.contains("[privacy.adaptive_clipping]")
            && adaptive.contains("not supported")
            && adaptive.contains("clip_norm"),
        "{adaptive}"
    );
    let pld = refusal("accountant = \"pld\"\n");
    assert!(pld.contains("pld") && pld.contains("`rdp`"), "{pld}");
    // The one accountant there is, named or by default, is accepted.
    assert!(accepted(&format!(
        "{MINIMAL}{privacy}accountant = \"rdp\"\n"
    )));
    assert!(accepted(&format!("{MINIMAL}{privacy}")));
}

fn accepted(text: &str) -> bool {
    matches!(
        TaskSpec::from_toml_str(text).unwrap().privacy_spec(),
        Ok(Some(_))
    )
}

#[test]
fn strategy_and_local_tables_parse_default_and_are_checked() {
    use consortia_model::StrategySpec;
    let plain = TaskSpec::from_toml_str(MINIMAL).unwrap();
    assert_eq!(plain.strategy, StrategySpec::default());
    assert_eq!(plain.local.proximal_mu, 0.0);
    // A task without [strategy] or [local] hashes as it did before they existed:
    // its canonical form does not mention them.
    let text = plain.to_toml_string().unwrap();
    assert!(
        !text.contains("strategy") && !text.contains("[local]"),
        "{text}"
    );

    let adam = format!(
        "{MINIMAL}\n[strategy]\nkind = \"fedadam\"\nserver_learning_rate = 0.05\n\n[local]\nproximal_mu = 0.01\n"
    );
    let task = TaskSpec::from_toml_str(&adam).unwrap();
    assert_eq!(
        task.strategy,
        StrategySpec::FedAdam {
            server_learning_rate: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3
        }
    );
    assert_eq!(task.local.proximal_mu, 0.01);
    let back = TaskSpec::from_toml_str(&task.to_toml_string().unwrap()).unwrap();
    assert_eq!(back, task);
    assert_ne!(
        task.canonical_hash().unwrap(),
        plain.canonical_hash().unwrap()
    );

    for kind in ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] {
        let t = TaskSpec::from_toml_str(&format!("{MINIMAL}\n[strategy]\nkind = \"{kind}\"\n"))
            .unwrap();
        assert_eq!(t.strategy.kind(), kind);
    }
    let unknown = format!("{MINIMAL}\n[strategy]\nkind = \"fedsgd\"\n");
    let err = TaskSpec::from_toml_str(&unknown).unwrap_err().to_string();
    assert!(err.contains("fedsgd") && err.contains("fedadam"), "{err}");
    let stray = format!("{MINIMAL}\n[strategy]\nkind = \"fedavg\"\nmomentum = 0.9\n");
    let err = TaskSpec::from_toml_str(&stray).unwrap_err().to_string();
    assert!(err.contains("momentum"), "{err}");

    let bad_beta = format!("{MINIMAL}\n[strategy]\nkind = \"fedyogi\"\nbeta2 = 1.0\n");
    assert_eq!(invalid_field(&bad_beta).0, "strategy.beta2");
    let bad_mu = format!("{MINIMAL}\n[local]\nproximal_mu = -0.5\n");
    assert_eq!(
        invalid_field(&bad_mu),
        ("local.proximal_mu".into(), "-0.5".into())
    );
}

#[test]
fn errors_name_where_the_task_came_from_and_never_echo_a_huge_value() {
    let bad = MINIMAL.replacen("rounds = 3", "rounds = 0", 1);
    let err = TaskSpec::from_toml_named(&bad, "/etc/consortia/task.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/etc/consortia/task.toml") && err.contains("rounds"),
        "{err}"
    );
    let huge = MINIMAL.replacen(
        "name = \"t1\"",
        &format!("name = \"{}\"", "x".repeat(100_000)),
        1,
    );
    let err = TaskSpec::from_toml_str(&huge).unwrap_err().to_string();
    assert!(
        err.contains("name") && err.contains("characters in all"),
        "{err}"
    );
    assert!(err.len() < 500, "the error is {} bytes", err.len());
}
