//! Property-based fuzzing of the model crate's readers of untrusted text: task
//! files ([`TaskSpec::from_toml_str`]), partners' CSV rows
//! ([`Dataset::from_csv_str`] with a fixed schema), evaluation reports as the
//! coordinator receives them (JSON into [`Evaluation`], then `validate`), and
//! feature statistics ([`FeatureStats`] into a [`Standardizer`]).
//!
//! Each reader gets random input and valid input mutated. It must return an
//! error or a value — never panic — and never hold more memory than a small
//! multiple of its input (`PeakAlloc`); what it accepts must be usable
//! downstream without a panic (an accepted task builds its model, a valid
//! evaluation gives metrics and merges).
//!
//! Fixed seed and budget, so CI is deterministic and fast; a long campaign:
//! `PROPTEST_CASES=100000 cargo test --release -p consortia-model --test fuzz_inputs`.

use consortia_fuzzing::{PeakAlloc, fuzz, peak};
use consortia_model::standardize::{FeatureStats, Standardizer};
use consortia_model::{
    Dataset, EvalPartial, Evaluation, FeatureSchema, RegressionPartial, TaskSpec, initial_model,
};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// What parsing `len` bytes of text may hold: a parse tree or a design matrix
/// (a few `f64`s and a `String` header per two bytes of CSV), plus small change.
fn bound(len: usize) -> usize {
    128 * len + (256 << 10)
}

/// Values a mutation splices into text: numbers at and past every edge,
/// non-numbers, quotes and separators, TOML and JSON structure.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "0.5",
    "-0.0",
    "1e308",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "\"\"",
    "\"x\"",
    "\"yes\"",
    "[]",
    "[0, 1]",
    "[1, 0]",
    "{}",
    "true",
    "false",
    "null",
    ",",
    "\"",
    "\n",
    "\r\n",
    "=",
    "[",
    "]",
    "[[",
    "#",
    "é",
    "\u{feff}",
    "\0",
];

/// One edit of a valid text.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace what follows the first `=` or `:` of line (i mod lines) with a token.
    Value(usize, usize),
    /// Insert a token at byte (i mod len), on a char boundary.
    Insert(usize, usize),
    /// Delete line (i mod lines).
    DeleteLine(usize),
    /// Duplicate line (i mod lines).
    DuplicateLine(usize),
    /// Keep the first (n mod (len + 1)) bytes, on a char boundary.
    Truncate(usize),
    /// XOR byte (i mod len) with a mask (read back lossily as UTF-8).
    Flip(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let t = 0..TOKENS.len();
    prop_oneof![
        4 => (any::<usize>(), t.clone()).prop_map(|(i, k)| Edit::Value(i, k)),
        2 => (any::<usize>(), t).prop_map(|(i, k)| Edit::Insert(i, k)),
        1 => any::<usize>().prop_map(Edit::DeleteLine),
        1 => any::<usize>().prop_map(Edit::DuplicateLine),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
    ]
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(valid: &str, edits: &[Edit]) -> String {
    let mut s = valid.to_string();
    for e in edits {
        let lines: Vec<&str> = s.split('\n').collect();
        let n = lines.len();
        s = match *e {
            Edit::Value(i, k) => {
                let mut lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let line = &mut lines[i % n];
                if let Some(at) = line.find(['=', ':']) {
                    line.truncate(at + 1);
                    line.push(' ');
                    line.push_str(TOKENS[k]);
                }
                lines.join("\n")
            }
            Edit::Insert(i, k) => {
                let at = floor_boundary(&s, i % (s.len() + 1));
                let mut s = s.clone();
                s.insert_str(at, TOKENS[k]);
                s
            }
            Edit::DeleteLine(i) => {
                let mut lines = lines;
                lines.remove(i % n);
                lines.join("\n")
            }
            Edit::DuplicateLine(i) => {
                let mut lines = lines;
                lines.insert(i % n, lines[i % n]);
                lines.join("\n")
            }
            Edit::Truncate(k) => {
                let at = floor_boundary(&s, k % (s.len() + 1));
                s[..at].to_string()
            }
            Edit::Flip(i, m) if !s.is_empty() => {
                let mut b = s.into_bytes();
                let i = i % b.len();
                b[i] ^= m;
                String::from_utf8_lossy(&b).into_owned()
            }
            Edit::Flip(..) => s,
        };
    }
    s
}

fn texts(corpus: Vec<String>) -> impl Strategy<Value = String> {
    let n = corpus.len();
    prop_oneof![
        1 => ".{0,200}",
        1 => prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|t| t.concat()),
        6 => (0..n, prop::collection::vec(edit(), 1..5))
            .prop_map(move |(i, e)| mutate(&corpus[i], &e)),
    ]
}

const TASKS: &[&str] = &[
    include_str!("../../examples/telco_churn_task.toml"),
    include_str!("../../examples/telco_churn_secure.toml"),
    include_str!("../../examples/telco_churn_threshold.toml"),
    include_str!("../../examples/telco_churn_dp_eps1.toml"),
    include_str!("../../examples/telco_churn_ddg_eps1.toml"),
    include_str!("../../examples/telco_churn_mlp.toml"),
    include_str!("data/telco_task.toml"),
];

#[test]
fn task_files() {
    for t in TASKS {
        TaskSpec::from_toml_str(t).unwrap();
    }
    let corpus = TASKS.iter().map(|t| t.to_string()).collect();
    fuzz(256, texts(corpus), |text| {
        let (task, used) = peak(|| TaskSpec::from_toml_str(&text));
        prop_assert!(used <= bound(text.len()), "{used} bytes for {}", text.len());
        let Ok(task) = task else { return Ok(()) };
        // An accepted task is usable: every derived value, and its own round trip.
        let _ = task.privacy_spec();
        let _ = task.train_config();
        let _ = task.round_attempts();
        let hash = task.canonical_hash().unwrap();
        let again = TaskSpec::from_toml_str(&task.to_toml_string().unwrap()).unwrap();
        prop_assert_eq!(again.canonical_hash().unwrap(), hash);
        if task.param_count() <= 1 << 16 {
            prop_assert!(initial_model(&task).is_ok());
        }
        Ok(())
    });
}

fn schema() -> FeatureSchema {
    toml::from_str(
        r#"
        numeric = ["a", "b"]
        [label]
        column = "y"
        positive = "yes"
        [[categorical]]
        column = "c"
        categories = ["x", "y", "z"]
        "#,
    )
    .unwrap()
}

const CSVS: &[&str] = &[
    "id,y,c,b,a\n1, yes ,z,2.5,-1\n2,no,x,0,1e2\n3,no,y,3,4\n",
    "y,a,b,c\nyes,1,2,x\nno,3,4,y\n\"yes\",\"5\",\"6\",\"z\"\n",
    "a,b,c,y\r\n0.5,0.25,x,yes\r\n-3,7,z,no\r\n",
];

/// CSV rows built from cells: numbers, categories, labels and the tokens.
fn csv_rows() -> impl Strategy<Value = String> {
    let cell = prop_oneof![
        prop::sample::select(&["x", "y", "z", "yes", "no", "", " ", "1", "-2.5", "3e3"][..])
            .prop_map(String::from),
        prop::sample::select(TOKENS).prop_map(String::from),
        "[a-z0-9\" ,.\n-]{0,8}".prop_map(String::from),
    ];
    (
        prop::sample::select(&["y,a,b,c", "c,b,a,y", "a,a,b,c,y", "y,a,c", "", "y"][..]),
        prop::collection::vec(prop::collection::vec(cell, 0..6), 0..30),
    )
        .prop_map(|(header, rows)| {
            let mut out = String::from(header);
            for r in rows {
                out.push('\n');
                out.push_str(&r.join(","));
            }
            out
        })
}

#[test]
fn csv_rows_with_a_fixed_schema() {
    let schema = schema();
    for t in CSVS {
        Dataset::from_csv_str(t, "fuzz.csv", &schema).unwrap();
    }
    let corpus = CSVS.iter().map(|t| t.to_string()).collect();
    let strategy = prop_oneof![1 => csv_rows(), 2 => texts(corpus)];
    fuzz(256, strategy, |text| {
        let (data, used) = peak(|| Dataset::from_csv_str(&text, "fuzz.csv", &schema));
        prop_assert!(used <= bound(text.len()), "{used} bytes for {}", text.len());
        if let Ok(d) = data {
            prop_assert_eq!(d.feature_count(), 5);
            prop_assert!(d.features().iter().all(|v| v.is_finite()));
            prop_assert!(d.labels().iter().all(|&v| v == 0.0 || v == 1.0));
        }
        Ok(())
    });
}

fn binary(n: u64) -> Evaluation {
    let mut pos = vec![0; 10];
    let mut neg = vec![0; 10];
    pos[7] = n / 2;
    neg[2] = n - n / 2;
    Evaluation::Binary(EvalPartial {
        n,
        tp: n / 2,
        fp: 0,
        tn: n - n / 2,
        fn_: 0,
        log_loss_sum: 0.3 * n as f64,
        pos_hist: pos,
        neg_hist: neg,
    })
}

/// A valid regression evaluation, as JSON (its bin count is the crate's own).
fn regression_json() -> String {
    let fields: serde_json::Value = serde_json::json!({
        "kind": "regression", "n": 0, "sum_sq_error": 0.0, "sum_abs_error": 0.0,
        "sum_y": 0.0, "sum_y_sq": 0.0, "sum_deviance": 0.0,
        "pred_count": [], "pred_actual": [], "actual_count": [], "actual_sum": []
    });
    // The bin count is private: grow the histograms until the partial validates.
    for bins in 1..=4096 {
        let mut v = fields.clone();
        for k in ["pred_count", "actual_count"] {
            v[k] = serde_json::json!(vec![0u64; bins]);
        }
        for k in ["pred_actual", "actual_sum"] {
            v[k] = serde_json::json!(vec![0.0f64; bins]);
        }
        let e: Evaluation = serde_json::from_value(v.clone()).unwrap();
        if e.validate().is_ok() {
            return serde_json::to_string(&v).unwrap();
        }
    }
    panic!("no bin count validates an empty regression partial");
}

#[test]
fn evaluation_reports() {
    let mut corpus: Vec<String> = [binary(0), binary(10), binary(1001)]
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    corpus.push(regression_json());
    for c in &corpus {
        let e: Evaluation = serde_json::from_str(c).unwrap();
        e.validate().unwrap();
    }
    let first = corpus.clone();
    fuzz(256, (texts(corpus), 0..first.len()), |(text, other)| {
        let (parsed, used) = peak(|| {
            serde_json::from_str::<Evaluation>(&text)
                .ok()
                .filter(|e| e.validate().is_ok())
        });
        prop_assert!(used <= bound(text.len()), "{used} bytes for {}", text.len());
        let Some(e) = parsed else { return Ok(()) };
        // A valid evaluation gives metrics and merges with another valid one.
        let _ = e.metrics();
        let mut other: Evaluation = serde_json::from_str(&first[other]).unwrap();
        if other.merge(&e).is_ok() {
            let _ = other.metrics();
        }
        Ok(())
    });
}

/// Direct structural fuzzing of the partials' validators: arbitrary counts,
/// sums and histogram lengths.
#[test]
fn evaluation_partials() {
    let counts = prop::collection::vec(any::<u64>(), 0..12);
    let small = prop::collection::vec(0..1000u64, 0..12);
    let floats = prop::collection::vec(any::<f64>(), 0..12);
    let strategy = (
        any::<bool>(),
        any::<u64>(),
        any::<f64>(),
        prop_oneof![counts, small.clone()],
        small,
        floats.clone(),
        floats,
    );
    fuzz(256, strategy, |(consistent, tn, loss, pos, neg, fa, fb)| {
        // Counts consistent with the histograms now and then, so that
        // validation passes and what follows it runs.
        let tp = pos.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        let tn = if consistent {
            neg.iter().sum::<u64>()
        } else {
            tn
        };
        let p = EvalPartial {
            n: tp.wrapping_add(tn),
            tp,
            fp: 0,
            tn,
            fn_: 0,
            log_loss_sum: loss,
            pos_hist: pos,
            neg_hist: neg,
        };
        let e = Evaluation::Binary(p);
        if e.validate().is_ok() {
            let _ = e.metrics();
            let mut twice = e.clone();
            if twice.merge(&e).is_ok() {
                let _ = twice.metrics();
            }
        }
        let r = RegressionPartial {
            n: tp,
            sum_sq_error: loss,
            sum_abs_error: loss.abs(),
            sum_y: loss,
            sum_y_sq: loss * loss,
            sum_deviance: loss.abs(),
            pred_count: vec![tp; fa.len()],
            pred_actual: fa.clone(),
            actual_count: vec![tp; fb.len()],
            actual_sum: fb,
            private: false,
        };
        let e = Evaluation::Regression(r);
        if e.validate().is_ok() {
            let _ = e.metrics();
        }
        Ok(())
    });
}

/// Feature statistics as partners report them (`StatsReport`): merged, then
/// turned into a standardizer, or refused — never a panic or a non-finite
/// mean or standard deviation.
#[test]
fn feature_statistics() {
    let stats = (0..6usize).prop_flat_map(|d| {
        (
            any::<u64>(),
            prop::collection::vec(any::<f64>(), d..=d),
            prop::collection::vec(any::<f64>(), 0..8),
        )
    });
    fuzz(
        256,
        (stats.clone(), stats),
        |((c1, s1, q1), (c2, s2, q2))| {
            let mut a = FeatureStats {
                count: c1,
                sum: s1,
                sum_sq: q1,
            };
            let b = FeatureStats {
                count: c2,
                sum: s2,
                sum_sq: q2,
            };
            let _ = a.merge(&b);
            for s in [&a, &b] {
                if let Ok(st) = Standardizer::from_stats(s) {
                    prop_assert!(st.mean().iter().all(|m| m.is_finite()));
                    prop_assert!(st.std().iter().all(|d| d.is_finite() && *d > 0.0));
                }
                if let Ok(st) = Standardizer::from_parts(s.sum.clone(), s.sum_sq.clone()) {
                    prop_assert!(st.std().iter().all(|d| d.is_finite() && *d > 0.0));
                }
            }
            Ok(())
        },
    );
}

/// The probe sees what a reader holds (else every bound above is vacuous).
#[test]
fn peak_alloc_counts_live_bytes() {
    let (v, used) = peak(|| vec![0u8; 1 << 20]);
    assert!(used >= 1 << 20, "{used}");
    drop(v);
}
