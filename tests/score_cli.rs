//! `consortia model export` and `consortia score`: a partner scores its own CSV with
//! the federation's model, and a model of another task or an edited file is refused.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{EXE, Federation, task_with};

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

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The telco CSV's rows with a `customer` id column in front; the label column is
/// dropped, as a partner's list of customers to score would not have it.
fn customers(src: &Path, dst: &Path, rows: usize) {
    let text = std::fs::read_to_string(src).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let mut out = format!("customer,{}\n", header.split_once(',').unwrap().1);
    for (i, line) in lines.take(rows).enumerate() {
        out.push_str(&format!("c{i},{}\n", line.split_once(',').unwrap().1));
    }
    std::fs::write(dst, out).unwrap();
}

#[test]
fn a_partner_scores_its_customers_with_the_exported_model() {
    let mut fed = Federation::new(&task_with(2, 3, 60));
    fed.run_to_completion(Duration::from_secs(240));
    let model = fed.path("model.json");
    let out = consortia(&[
        "model",
        "export",
        "--state",
        fed.path("state").to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let data = fed.path("customers.csv");
    customers(&fed.partners[0].1, &data, 50);
    let scores = fed.path("scores.csv");
    let task_file = fed.path("task.toml");
    let out = consortia(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
        "--id-column",
        "customer",
        "--task",
        task_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Recompute each score from the export's named weights, bias and
    // standardisation, and the raw CSV: sigmoid(Σ w_j (x_j − μ_j) / σ_j + b).
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let w = floats(&doc["weights"]);
    let b = doc["bias"].as_f64().unwrap();
    let mean = floats(&doc["standardization"]["mean"]);
    let std = floats(&doc["standardization"]["std"]);
    let task = consortia_model::TaskSpec::load(&task_file).unwrap();
    let raw =
        consortia_model::Dataset::load_for_scoring(&data, &task.schema, Some("customer")).unwrap();
    let written = std::fs::read_to_string(&scores).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("customer,score"));
    let mut n = 0;
    for (i, line) in lines.enumerate() {
        let (id, score) = line.split_once(',').unwrap();
        assert_eq!(id, format!("c{i}"));
        let z: f64 = raw
            .features
            .row(i)
            .iter()
            .enumerate()
            .map(|(j, x)| w[j] * (x - mean[j]) / std[j])
            .sum::<f64>()
            + b;
        let got: f64 = score.parse().unwrap();
        assert!(
            (got - sigmoid(z)).abs() < 1e-9,
            "row {i}: {got} vs {}",
            sigmoid(z)
        );
        n += 1;
    }
    assert_eq!(n, 50);

    // A model of another task is refused, naming both tasks.
    let other = fed.path("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&task_file).unwrap().replacen(
            "name = \"telco-churn\"",
            "name = \"lead-scoring\"",
            1,
        ),
    )
    .unwrap();
    let out = consortia(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        fed.path("refused.csv").to_str().unwrap(),
        "--task",
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("telco-churn") && msg.contains("lead-scoring"),
        "{msg}"
    );
    assert!(!fed.path("refused.csv").exists(), "nothing written");

    // A file whose task was edited after export is refused.
    let edited = fed.path("edited.json");
    std::fs::write(
        &edited,
        std::fs::read_to_string(&model)
            .unwrap()
            .replacen("rounds = 2", "rounds = 3", 1),
    )
    .unwrap();
    let out = consortia(&[
        "score",
        "--model",
        edited.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        fed.path("edited.csv").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not match"), "{}", text(&out));

    // A CSV without a feature column names the file and the column.
    let broken = fed.path("broken.csv");
    std::fs::write(&broken, "customer,tenure\nc0,3\n").unwrap();
    let out = consortia(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--data",
        broken.to_str().unwrap(),
        "--out",
        fed.path("broken-scores.csv").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("broken.csv") && msg.contains("female"),
        "{msg}"
    );
}
