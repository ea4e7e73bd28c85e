//! CSV loading, holdout splits and partitioning.

mod common;

use consortia_model::{
    CategoricalSpec, DataError, Dataset, FeatureSchema, LabelSpec, MissingPolicy,
    partition_csv_by_column,
};
use ndarray::array;

fn schema() -> FeatureSchema {
    FeatureSchema {
        label: LabelSpec {
            column: "y".into(),
            positive: Some("yes".into()),
            negative: None,
        },
        numeric: vec!["a".into(), "b".into()],
        log1p: Vec::new(),
        categorical: vec![CategoricalSpec {
            column: "c".into(),
            categories: vec!["x".into(), "y".into(), "z".into()],
        }],
        missing: Default::default(),
        bounds: Default::default(),
        ratings: None,
    }
}

fn load(text: &str) -> Result<Dataset, DataError> {
    Dataset::from_csv_str(text, "part.csv", &schema())
}

#[test]
fn encodes_numeric_then_one_hot_and_ignores_other_columns() {
    let d = load("id,y,c,b,a\n1, yes ,z,2.5,-1\n2,no,x,0,1e2\n3,no,y,3,4\n").unwrap();
    assert_eq!(
        d.features(),
        &array![
            [-1.0, 2.5, 0.0, 0.0, 1.0],
            [100.0, 0.0, 1.0, 0.0, 0.0],
            [4.0, 3.0, 0.0, 1.0, 0.0]
        ]
    );
    assert_eq!(d.labels(), &array![1.0, 0.0, 0.0]);
    assert_eq!((d.len(), d.feature_count(), d.positives()), (3, 5, 1));
}

#[test]
fn errors_name_file_line_row_and_column() {
    let err = load("y,a,c\nyes,1,x\n").unwrap_err();
    assert!(
        matches!(&err, DataError::MissingColumn { column, .. } if column == "b"),
        "{err}"
    );
    assert!(err.to_string().contains("part.csv"));

    let err = load("y,a,b,c\nyes,1,2,x\n\nno,1,two,x\n").unwrap_err();
    assert!(
        matches!(&err, DataError::NotNumeric { at, value } if at.line == 4 && at.row == 2 && at.column == "b" && value == "two"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("part.csv:4: row 2, column `b`"),
        "{err}"
    );

    let err = load("y,a,b,c\nyes,1,inf,x\n").unwrap_err();
    assert!(matches!(err, DataError::NotNumeric { .. }), "{err}");

    let err = load("y,a,b,c\nyes,1,2,x\nno,,2,x\n").unwrap_err();
    assert!(
        matches!(&err, DataError::EmptyNumeric { at } if (at.line, at.row, at.column.as_str()) == (3, 2, "a")),
        "{err}"
    );
    assert!(err.to_string().contains("[schema.missing]"), "{err}");

    let err = load("y,a,b,c\nyes,1,2,w\n").unwrap_err();
    assert!(
        matches!(&err, DataError::UnknownCategory { at, value, .. } if (at.line, at.row, at.column.as_str(), value.as_str()) == (2, 1, "c", "w")),
        "{err}"
    );

    let err = load("y,a,b,c\nyes,1,2,x\nno,1,2,x\nmaybe,1,2,x\n").unwrap_err();
    assert!(
        matches!(&err, DataError::UnknownLabel { at, value, negative, .. } if (at.line, at.row, at.column.as_str()) == (4, 3, "y") && value == "maybe" && negative == "no"),
        "{err}"
    );

    let err = load("y,a,b,c\nyes,1,2\n").unwrap_err();
    assert!(
        matches!(
            err,
            DataError::FieldCount {
                line: 2,
                found: 3,
                expected: 4,
                ..
            }
        ),
        "{err}"
    );

    let err = load("y,a,b,c,a\n").unwrap_err();
    assert!(matches!(err, DataError::DuplicateColumn { .. }), "{err}");
    assert!(matches!(load(""), Err(DataError::Empty { .. })));
    assert!(matches!(
        load("y,a,b,c\n\"yes,1,2,x\n"),
        Err(DataError::Syntax { line: 2, .. })
    ));

    let mut bad_schema = schema();
    bad_schema.numeric.push("y".into());
    let err = Dataset::from_csv_str("y,a,b,c\n", "p.csv", &bad_schema).unwrap_err();
    assert!(matches!(err, DataError::Schema(_)), "{err}");

    let err = Dataset::load_csv("/nonexistent/part.csv", &schema()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/part.csv"), "{err}");
}

#[test]
fn label_values_and_missing_policy() {
    // A partner may hold only negatives; the first non-positive value is negative.
    let d = load("y,a,b,c\nno,1,2,x\nno,1,2,x\n").unwrap();
    assert_eq!(d.positives(), 0);

    // A fixed negative value is enforced even when it is the only other value.
    let mut s = schema();
    s.label.negative = Some("No".into());
    let err = Dataset::from_csv_str("y,a,b,c\nno,1,2,x\n", "p.csv", &s).unwrap_err();
    assert!(matches!(err, DataError::UnknownLabel { .. }), "{err}");

    s.missing.insert("a".into(), MissingPolicy::Zero);
    let d = Dataset::from_csv_str("y,a,b,c\nNo,  ,2,x\n", "p.csv", &s).unwrap();
    assert_eq!(d.features().row(0).to_vec(), [0.0, 2.0, 1.0, 0.0, 0.0]);
}

#[test]
fn new_checks_shapes_and_labels() {
    assert!(Dataset::new(array![[1.0], [2.0]], array![1.0, 0.0]).is_ok());
    assert!(Dataset::new(array![[1.0], [2.0]], array![1.0]).is_err());
    assert!(Dataset::new(array![[1.0]], array![0.5]).is_err());
    assert!(Dataset::new(array![[f64::NAN]], array![0.0]).is_err());
}

#[test]
fn holdout_split_is_stratified_and_deterministic() {
    let n = 1000;
    let features = ndarray::Array2::from_shape_fn((n, 1), |(i, _)| i as f64);
    let labels = ndarray::Array1::from_shape_fn(n, |i| if i.is_multiple_of(4) { 1.0 } else { 0.0 });
    let d = Dataset::new(features, labels).unwrap();

    let (train, test) = d.split_holdout(0.2, 42);
    assert_eq!((train.len(), test.len()), (800, 200));
    assert_eq!((train.positives(), test.positives()), (200, 50));
    // Every row lands in exactly one part, in original order.
    let mut ids: Vec<f64> = train.features().column(0).to_vec();
    let test_ids: Vec<f64> = test.features().column(0).to_vec();
    assert!(test_ids.windows(2).all(|w| w[0] < w[1]));
    ids.extend(&test_ids);
    ids.sort_by(f64::total_cmp);
    assert_eq!(ids, (0..n).map(|i| i as f64).collect::<Vec<_>>());
    // Labels travel with their rows.
    for (row, y) in test.features().rows().into_iter().zip(test.labels()) {
        assert_eq!(*y == 1.0, (row[0] as usize).is_multiple_of(4));
    }

    assert_eq!(d.split_holdout(0.2, 42).1, test);
    assert_ne!(d.split_holdout(0.2, 43).1, test);
    assert_eq!(d.split_holdout(0.0, 1).1.len(), 0);
    assert_eq!(d.split_holdout(1.5, 1).1.len(), n);
    assert_eq!(d.split_holdout(f64::NAN, 1).1.len(), 0);
}

#[test]
fn partition_writes_one_file_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("all.csv");
    std::fs::write(
        &input,
        "y,a,b,c,region\nyes,1,2,x,North-East\nno,3,4,y,\"South, far\"\nno,5,6,z,North-East\n",
    )
    .unwrap();
    let out = dir.path().join("parts");
    let parts = partition_csv_by_column(&input, "region", &out).unwrap();
    let summary: Vec<_> = parts
        .iter()
        .map(|(v, p, n)| (v.as_str(), p.file_name().unwrap().to_str().unwrap(), *n))
        .collect();
    assert_eq!(
        summary,
        [
            ("North-East", "north_east.csv", 2),
            ("South, far", "south_far.csv", 1)
        ]
    );
    let north = Dataset::load_csv(&parts[0].1, &schema()).unwrap();
    assert_eq!(north.features().column(0).to_vec(), [1.0, 5.0]);
    let south = std::fs::read_to_string(&parts[1].1).unwrap();
    assert_eq!(south, "y,a,b,c,region\nno,3,4,y,\"South, far\"\n");

    let err = partition_csv_by_column(&input, "country", &out).unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { .. }), "{err}");
}

#[test]
fn telco_partitions_by_contract() {
    let dir = tempfile::tempdir().unwrap();
    let parts = partition_csv_by_column(common::telco_csv(), "contract", dir.path()).unwrap();
    let summary: Vec<_> = parts.iter().map(|(v, _, n)| (v.as_str(), *n)).collect();
    assert_eq!(
        summary,
        [
            ("Month-to-month", 3875),
            ("One year", 1473),
            ("Two year", 1695)
        ]
    );
}

#[test]
fn log1p_columns_are_encoded_as_ln_1_plus_x_and_refuse_minus_one() {
    let mut s = schema();
    s.log1p = vec!["b".into()];
    s.missing.insert("b".into(), MissingPolicy::Zero);
    let d = Dataset::from_csv_str("y,a,b,c\nyes,-3,0,x\nno,5,e,y\nno,5,,z\n", "p.csv", &s);
    assert!(matches!(d, Err(DataError::NotNumeric { .. })), "{d:?}");
    let d =
        Dataset::from_csv_str("y,a,b,c\nyes,-3,0,x\nno,5,99,y\nno,5,,z\n", "p.csv", &s).unwrap();
    // `a` is left as it is (even below −1); `b` becomes ln(1 + b), a blank ln(1 + 0).
    assert_eq!(d.features().column(0).to_vec(), [-3.0, 5.0, 5.0]);
    assert_eq!(d.features().column(1).to_vec(), [0.0, 100f64.ln(), 0.0]);

    for value in ["-1", "-2.5"] {
        let text = format!("y,a,b,c\nyes,1,2,x\nno,1,{value},x\n");
        let err = Dataset::from_csv_str(&text, "p.csv", &s).unwrap_err();
        assert!(
            matches!(&err, DataError::OutsideLog1p { at, value: v } if (at.line, at.row, at.column.as_str()) == (3, 2, "b") && v == value),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("p.csv:3: row 2, column `b`") && msg.contains("log1p"),
            "{msg}"
        );
    }
    // Scoring reads features the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("score.csv");
    std::fs::write(&path, "a,b,c\n1,-7,x\n").unwrap();
    let err = Dataset::load_for_scoring(&path, &s, None).unwrap_err();
    assert!(matches!(err, DataError::OutsideLog1p { .. }), "{err}");
}

/// A regression task's label column holds numbers in the family's support; anything else is
/// refused with the file, line, row and column.
#[test]
fn numeric_targets_outside_the_family_are_refused_naming_the_cell() {
    let task = consortia_model::TaskSpec::from_toml_str(
        "name = \"clv\"\nrounds = 1\nmin_partners = 1\nround_deadline_secs = 10\n\
         local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.01\nseed = 1\n\
         [model]\nkind = \"glm\"\nfamily = \"tweedie\"\npower = 1.5\n\
         [schema]\nnumeric = [\"spend\"]\nlog1p = [\"spend\"]\n[schema.label]\ncolumn = \"later\"\n",
    )
    .unwrap();
    // `log1p` survives the canonical form.
    let text = task.to_toml_string().unwrap();
    assert!(text.contains("log1p = [\"spend\"]"), "{text}");
    assert_eq!(
        consortia_model::TaskSpec::from_toml_str(&text).unwrap(),
        task
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partner.csv");
    let load = |text: &str| {
        std::fs::write(&path, text).unwrap();
        consortia_model::Dataset::load_task_csv(&path, &task)
    };
    let d = load("spend,later\n0,0\n9,12.5\n").unwrap();
    assert_eq!(d.labels().to_vec(), [0.0, 12.5]);
    assert_eq!(d.features().column(0).to_vec(), [0.0, 10f64.ln()]);

    let file = path.display().to_string();
    for (bad, expected) in [
        ("n/a", "a finite number"),
        ("-3", "at least 0"),
        ("", "a finite number"),
    ] {
        let err = load(&format!("spend,later\n1,2\n4,{bad}\n")).unwrap_err();
        assert!(
            matches!(&err, DataError::BadTarget { at, value, .. } if (at.line, at.row, at.column.as_str()) == (3, 2, "later") && value == bad),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{file}:3: row 2, column `later`")) && msg.contains(expected),
            "{msg}"
        );
    }
}
