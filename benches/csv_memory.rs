//! Peak memory of the agent's data path on a large CSV: loading a partner's file under
//! the task's schema and holding out rows ([`LocalData::load`]), its feature statistics,
//! the standardisation of both parts, evaluation of the initial model on the held-out
//! rows and one round of the task's own local update — what the shipped agent does with
//! its rows before and during its first round.
//!
//! The CSV is generated into a temporary directory by resampling the rows of the bundled
//! telco churn file (`examples/data/telco_churn_ibm.csv`, seeded, written as it is drawn),
//! so nothing large is committed. The data path then runs in a child process of this
//! binary, so its peak resident set (`VmHWM` from `/proc/self/status`) counts the agent's
//! work alone, not the generator's. The loaded feature matrix is rows × encoded features ×
//! 8 bytes; the goal is a peak of at most 3× that.
//!
//! ```text
//! cargo bench --bench csv_memory -- [--rows 1000000] [--task examples/telco_churn_task.toml]
//! ```

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use consortia_client::local::LocalData;
use consortia_client::training;
use consortia_model::{Standardizer, TaskSpec, initial_model};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/telco_churn_ibm.csv"
);
const DEFAULT_TASK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/telco_churn_task.toml"
);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load-child") {
        return load_child(Path::new(&args[2]), Path::new(&args[3]));
    }
    let mut rows = 1_000_000usize;
    let mut task = PathBuf::from(DEFAULT_TASK);
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--rows" => {
                rows = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .expect("--rows N");
                i += 2;
            }
            "--task" => {
                task = PathBuf::from(args.get(i + 1).expect("--task FILE"));
                i += 2;
            }
            _ => i += 1,
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("partner.csv");
    let started = Instant::now();
    let bytes = generate(&csv, rows);
    println!(
        "generated {rows} rows ({:.1} MB) by resampling {SOURCE} in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .arg("--load-child")
        .arg(&csv)
        .arg(&task)
        .output()
        .expect("load child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the data path failed");
}

/// Writes `rows` rows drawn with replacement from the bundled file (its header first);
/// returns the file's size in bytes.
fn generate(path: &Path, rows: usize) -> u64 {
    let source = BufReader::new(std::fs::File::open(SOURCE).expect("bundled telco data"));
    let mut lines = source.lines().map(|l| l.expect("bundled telco data"));
    let header = lines.next().expect("a header");
    let body: Vec<String> = lines.filter(|l| !l.trim().is_empty()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(20261129);
    let mut out = BufWriter::new(std::fs::File::create(path).expect("generated CSV"));
    writeln!(out, "{header}").expect("write");
    for _ in 0..rows {
        writeln!(
            out,
            "{}",
            body[(rng.next_u64() % body.len() as u64) as usize]
        )
        .expect("write");
    }
    out.flush().expect("write");
    std::fs::metadata(path).expect("generated CSV").len()
}

/// The agent's data path on `csv` under the task in `task`; prints the peak resident set.
fn load_child(csv: &Path, task: &Path) {
    let task = TaskSpec::from_toml_str(&std::fs::read_to_string(task).expect("task file"))
        .expect("task parses");
    let started = Instant::now();
    let mut data = LocalData::load(csv, &task, "bench").expect("partner data");
    let rows = data.train_rows() + data.test_rows();
    let loaded = started.elapsed().as_secs_f64();
    let after_load = vm_kib("VmHWM:");
    let standardizer = Standardizer::from_stats(&data.feature_stats()).expect("statistics");
    let (mean, std) = (standardizer.mean().to_vec(), standardizer.std().to_vec());
    let model = initial_model(&task).expect("initial model");
    data.evaluate(model.as_ref(), &mean, &std)
        .expect("evaluation");
    let update = training::build(&task, None).expect("local update");
    data.contribute(update.as_ref(), model.as_ref(), 1, &mean, &std, &mut |_| {})
        .expect("one round");
    let peak = vm_kib("VmHWM:");
    let features = task.schema.feature_count();
    let matrix = rows * features * 8;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "{rows} rows x {features} features: feature matrix {:.1} MiB; loaded in {loaded:.1} s",
        mib(matrix as f64)
    );
    println!(
        "peak RSS after loading and holding out: {:.1} MiB ({:.2}x the matrix)",
        mib(after_load as f64 * 1024.0),
        after_load as f64 * 1024.0 / matrix as f64
    );
    println!(
        "peak RSS after statistics, standardisation, evaluation and one round: {:.1} MiB ({:.2}x the matrix)",
        mib(peak as f64 * 1024.0),
        peak as f64 * 1024.0 / matrix as f64
    );
}

/// A `kB` field of `/proc/self/status` (`VmHWM:` is the peak resident set).
fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
