//! Server strategies on partner splits of the telco churn data, simulated in process with
//! the real pieces of a round:
//!
//! * every partner is a [`LocalData`] (its own stratified hold-out split, seeded by the task's
//!   seed and its name) and computes its update with the [`LocalUpdate`] the task asks for
//!   (`consortia_client::training::build`: plain local SGD, FedProx, or record-level DP-SGD with
//!   the noise the agent adds; DP-SGD has no proximal term, so `[local] proximal_mu` changes
//!   nothing under the ε = 3 task: the tables' "local update" column says what ran);
//! * feature standardisation is federation-wide, from the partners' merged feature statistics
//!   (under `[privacy]` the noised statistics each partner would release);
//! * the coordinator's side is the example-weighted mean of the deltas ([`WeightedSum`]) as an
//!   [`AggregatedUpdate::WeightedMeanDelta`], turned into the FedAvg delta
//!   ([`AggregatedUpdate::model_delta`]) and stepped by the task's server strategy
//!   (`consortia_model::strategy::build`).
//!
//! After every round the global model is scored **exactly** (no DP noise) on every partner's
//! held-out rows and the partials are merged ([`EvalPartial::merge`]) into the pooled ROC-AUC.
//! Reported per configuration, over seeds (the task's `seed`, which also draws the hold-out
//! rows): the final pooled ROC-AUC (mean ± sample sd) and the first round whose model reaches
//! [`TARGET_AUC`] (mean over the seeds that reach it).
//!
//! Splits:
//!
//! * **A**: by `contract` (month-to-month, one-year, two-year), as `consortia demo` does;
//! * **B**: label and quantity skew (Hsu et al. 2019, "Measuring the Effects of Non-Identical
//!   Data Distribution for Federated Visual Classification"): for each class the rows are
//!   shuffled and dealt to [`SPLIT_B_PARTNERS`] partners in proportions drawn from a symmetric
//!   Dirichlet(α = [`SPLIT_B_ALPHA`], or `--alpha`), all from the fixed seed [`SPLIT_B_SEED`]
//!   (the draw is repeated, from the same generator, until every partner has at least
//!   [`SPLIT_B_MIN_ROWS`] rows). At α = 0.1 three of the four partners hold a single class and
//!   one holds about 5 % of the rows. The split does not change with the task's seed.
//!
//! Task settings are those of `examples/telco_churn_task.toml` (no DP) and
//! `examples/telco_churn_dp_eps3.toml` (record-level DP-SGD at ε = 3, δ = 1e-5 per partner,
//! local noise), with a `[strategy] kind = "…"` table appended, so every hyper-parameter is the
//! shipped serde default.
//!
//! ```text
//! cargo bench --bench strategies                 # 3 seeds, 20 rounds
//! cargo bench --bench strategies -- --quick      # 1 seed, 5 rounds (smoke run)
//! cargo bench --bench strategies -- --sweep      # + server_learning_rate sweep on split B
//! cargo bench --bench strategies -- --curves     # + ROC-AUC per round
//! ```
//!
//! Options: `--seeds N`, `--rounds N`, `--threads N` (default: the available cores),
//! `--no-dp` (skip the ε = 3 runs), `--alpha A` (split B's Dirichlet concentration), `--curves`
//! (also the ROC-AUC after every round, first seed, no DP). The Markdown tables go to standard
//! output, progress to standard error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use consortia_client::local::LocalData;
use consortia_client::training::{ContributionKind, LocalUpdate};
use consortia_model::{
    AggregatedUpdate, EvalPartial, FeatureStats, Standardizer, TaskSpec, WeightedSum,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The pooled held-out ROC-AUC a run must reach to count as converged.
const TARGET_AUC: f64 = 0.83;
/// The demo's final ROC-AUC (README, "Results on the bundled data"): FedAvg on split A at the
/// shipped seed (the first of the runs' seeds: the task file's, +1, +2, …) must reproduce it.
const DEMO_AUC: f64 = 0.8372;
const SPLIT_B_PARTNERS: usize = 4;
const SPLIT_B_ALPHA: f64 = 0.1;
const SPLIT_B_SEED: u64 = 7;
const SPLIT_B_MIN_ROWS: usize = 150;
/// Server learning rates of the `--sweep` (stateful strategies, split B).
const SWEEP_LRS: [f64; 5] = [0.01, 0.03, 0.1, 0.3, 1.0];

/// One partner's file.
#[derive(Debug, Clone)]
struct PartnerFile {
    name: String,
    path: PathBuf,
    rows: usize,
    positives: usize,
}

/// A partner split.
struct Split {
    label: String,
    partners: Vec<PartnerFile>,
}

/// One row of the tables: a strategy (and local update) as task-file text.
#[derive(Debug, Clone)]
struct Config {
    label: String,
    /// Appended to the task file.
    toml: String,
}

impl Config {
    fn strategy(kind: &str) -> Self {
        Self {
            label: kind.to_string(),
            toml: format!("\n[strategy]\nkind = \"{kind}\"\n"),
        }
    }

    fn fedprox(mu: f64) -> Self {
        Self {
            label: format!("fedprox (fedavg, μ = {mu})"),
            toml: format!("\n[strategy]\nkind = \"fedavg\"\n\n[local]\nproximal_mu = {mu}\n"),
        }
    }

    fn with_lr(kind: &str, lr: f64) -> Self {
        Self {
            label: format!("{kind}, η = {lr}"),
            toml: format!("\n[strategy]\nkind = \"{kind}\"\nserver_learning_rate = {lr}\n"),
        }
    }
}

/// One simulated federation.
#[derive(Debug, Clone)]
struct Job {
    split: usize,
    config: usize,
    dp: bool,
    seed: u64,
}

/// What a run produced.
#[derive(Debug, Clone)]
struct Outcome {
    /// Pooled held-out ROC-AUC after each round.
    aucs: Vec<f64>,
    /// Why the run stopped early, if it did.
    failed: Option<String>,
    /// The partners' local update (`LocalUpdate::name`).
    update: &'static str,
    seconds: f64,
}

impl Outcome {
    fn final_auc(&self) -> Option<f64> {
        if self.failed.is_some() {
            return None;
        }
        self.aucs.last().copied()
    }

    fn first_reach(&self) -> Option<usize> {
        self.aucs
            .iter()
            .position(|&a| a >= TARGET_AUC)
            .map(|i| i + 1)
    }
}

struct Args {
    seeds: usize,
    rounds: u32,
    threads: usize,
    dp: bool,
    sweep: bool,
    curves: bool,
    alpha: f64,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<usize> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
            })
    };
    let quick = args.iter().any(|a| a == "--quick");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Args {
        seeds: value("--seeds").unwrap_or(if quick { 1 } else { 3 }),
        rounds: value("--rounds").map_or(if quick { 5 } else { 20 }, |r| r as u32),
        threads: value("--threads").unwrap_or(threads).max(1),
        dp: !args.iter().any(|a| a == "--no-dp"),
        sweep: args.iter().any(|a| a == "--sweep"),
        curves: args.iter().any(|a| a == "--curves"),
        alpha: args
            .iter()
            .position(|a| a == "--alpha")
            .and_then(|i| args.get(i + 1))
            .map_or(SPLIT_B_ALPHA, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--alpha takes a number, not {v:?}"))
            }),
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a small seeded generator for the split.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) (Marsaglia & Tsang 2000; shape < 1 by `Gamma(a + 1) · U^(1/a)`).
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            if self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    fn dirichlet(&mut self, alpha: f64, k: usize) -> Vec<f64> {
        let g: Vec<f64> = (0..k).map(|_| self.gamma(alpha)).collect();
        let total: f64 = g.iter().sum();
        g.into_iter().map(|x| x / total).collect()
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The bundled CSV as header and data lines (it has no quoted fields).
fn read_csv(path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("read the telco CSV");
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().expect("a header").to_string();
    (header, lines.map(str::to_string).collect())
}

/// Rows and positive rows of a partner file.
fn count_labels(path: &Path, task: &TaskSpec) -> (usize, usize) {
    let (header, rows) = read_csv(path);
    let idx = header
        .split(',')
        .position(|h| h.trim() == task.schema.label.column)
        .expect("label column");
    let positives = rows
        .iter()
        .filter(|r| r.split(',').nth(idx).map(str::trim) == task.schema.label.positive.as_deref())
        .count();
    (rows.len(), positives)
}

/// Split A: one partner per contract type, as the demo makes it.
fn split_a(csv: &Path, dir: &Path, task: &TaskSpec) -> Split {
    let parts = consortia_model::partition_csv_by_column(csv, "contract", dir)
        .expect("split the telco CSV by contract");
    let partners = parts
        .into_iter()
        .map(|(value, path, _)| {
            let (rows, positives) = count_labels(&path, task);
            PartnerFile {
                name: consortia_model::data::partner_name(&value),
                path,
                rows,
                positives,
            }
        })
        .collect();
    Split {
        label: "A (by contract)".to_string(),
        partners,
    }
}

/// Split B: per-class Dirichlet(α) shares over the partners (see the module documentation).
fn split_b(csv: &Path, dir: &Path, task: &TaskSpec, alpha: f64) -> Split {
    let (header, rows) = read_csv(csv);
    let idx = header
        .split(',')
        .position(|h| h.trim() == task.schema.label.column)
        .expect("label column");
    let positive =
        |r: &String| r.split(',').nth(idx).map(str::trim) == task.schema.label.positive.as_deref();
    let classes: [Vec<usize>; 2] = [
        (0..rows.len()).filter(|&i| !positive(&rows[i])).collect(),
        (0..rows.len()).filter(|&i| positive(&rows[i])).collect(),
    ];
    let mut rng = SplitMix(SPLIT_B_SEED);
    let k = SPLIT_B_PARTNERS;
    let assigned = loop {
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); k];
        for class in &classes {
            let mut class = class.clone();
            rng.shuffle(&mut class);
            let shares = rng.dirichlet(alpha, k);
            let mut start = 0usize;
            let mut cumulative = 0.0;
            for (p, share) in shares.iter().enumerate() {
                cumulative += share;
                let end = if p + 1 == k {
                    class.len()
                } else {
                    ((cumulative * class.len() as f64).round() as usize).clamp(start, class.len())
                };
                out[p].extend_from_slice(&class[start..end]);
                start = end;
            }
        }
        if out.iter().all(|p| p.len() >= SPLIT_B_MIN_ROWS) {
            break out;
        }
    };
    let partners = assigned
        .into_iter()
        .enumerate()
        .map(|(i, mut mine)| {
            // Keep the input order within a partner, as a partner's own file would.
            mine.sort_unstable();
            let name = format!("p{}", i + 1);
            let path = dir.join(format!("{name}.csv"));
            let mut text = header.clone();
            text.push('\n');
            for &r in &mine {
                text.push_str(&rows[r]);
                text.push('\n');
            }
            std::fs::write(&path, text).expect("write a split-B partner file");
            let positives = mine.iter().filter(|&&r| positive(&rows[r])).count();
            PartnerFile {
                name,
                path,
                rows: mine.len(),
                positives,
            }
        })
        .collect();
    Split {
        label: format!(
            "B (label + quantity skew: Dirichlet α = {alpha}, split seed {SPLIT_B_SEED})"
        ),
        partners,
    }
}

/// The task of a run: the example file, the strategy table appended, the seed set.
fn task_for(base: &str, config: &Config, seed: u64) -> Result<TaskSpec, String> {
    let text = format!("{base}\n{}", config.toml);
    let mut task = TaskSpec::from_toml_str(&text).map_err(|e| e.to_string())?;
    task.seed = seed;
    Ok(task)
}

/// One federation: `rounds` rounds, scored exactly after each.
fn simulate(task: &TaskSpec, partners: &[PartnerFile], rounds: u32) -> Outcome {
    let started = Instant::now();
    let mut aucs = Vec::new();
    let mut update = "?";
    let failed = run_rounds(task, partners, rounds, &mut aucs, &mut update).err();
    Outcome {
        aucs,
        failed,
        update,
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn run_rounds(
    task: &TaskSpec,
    partners: &[PartnerFile],
    rounds: u32,
    aucs: &mut Vec<f64>,
    update_name: &mut &'static str,
) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let privacy = task.privacy_spec().map_err(|e| s(&e))?;
    let update: Box<dyn LocalUpdate> =
        consortia_client::training::build(task, privacy.as_ref()).map_err(|e| s(&e))?;
    *update_name = update.name();
    let mut data = partners
        .iter()
        .map(|p| LocalData::load(&p.path, task, &p.name).map_err(|e| s(&e)))
        .collect::<Result<Vec<_>, _>>()?;

    // Federation-wide standardisation from what each partner releases.
    let mut stats: Option<FeatureStats> = None;
    for d in &data {
        let released = match &privacy {
            None => d.feature_stats(),
            Some(spec) => {
                let bounds = task.schema.feature_bounds().map_err(|c| s(&c))?;
                d.private_feature_stats(spec, &bounds).map_err(|e| s(&e))?
            }
        };
        match stats.as_mut() {
            None => stats = Some(released),
            Some(m) => m.merge(&released).map_err(|e| s(&e))?,
        }
    }
    let st = Standardizer::from_stats(&stats.ok_or("no partners")?).map_err(|e| s(&e))?;
    let (mean, std) = (st.mean().to_vec(), st.std().to_vec());

    let mut strategy = consortia_model::strategy::build(&task.strategy);
    let mut global = consortia_model::initial_model(task).map_err(|e| s(&e))?;
    let train = task.train_config();
    for round in 1..=u64::from(rounds) {
        let mut sum = WeightedSum::new(global.param_count());
        for d in &mut data {
            let c = d
                .contribute(
                    update.as_ref(),
                    global.as_ref(),
                    round,
                    &mean,
                    &std,
                    &mut |_| {},
                )
                .map_err(|e| format!("round {round}: {e}"))?;
            if c.kind != ContributionKind::Delta {
                return Err(format!("round {round}: a {:?} contribution", c.kind));
            }
            sum.add(&c.vector, d.train_rows() as f64)
                .map_err(|e| s(&e))?;
        }
        let aggregate = AggregatedUpdate::WeightedMeanDelta(sum.finish().map_err(|e| s(&e))?);
        let delta = aggregate
            .model_delta(global.as_ref(), &train)
            .map_err(|e| format!("round {round}: {e}"))?;
        let next = strategy
            .aggregate(global.params(), &delta)
            .map_err(|e| format!("round {round}: {e}"))?;
        global.set_params(&next).map_err(|e| s(&e))?;

        let mut pooled = EvalPartial::empty();
        for d in &mut data {
            let evaluation = d
                .evaluate(global.as_ref(), &mean, &std)
                .map_err(|e| s(&e))?;
            let partial = evaluation
                .as_binary()
                .ok_or("the model's evaluation is not a binary classifier's")?;
            pooled.merge(partial).map_err(|e| s(&e))?;
        }
        aucs.push(
            pooled
                .roc_auc()
                .ok_or("a class is missing from the held-out rows")?,
        );
    }
    Ok(())
}

/// `mean ± sd` (sample sd) of the finite figures.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

/// The two cells of one (configuration, privacy) group: final ROC-AUC and rounds to target.
fn cells(outcomes: &[&Outcome]) -> (String, String) {
    let n = outcomes.len();
    let finals: Vec<f64> = outcomes.iter().filter_map(|o| o.final_auc()).collect();
    let failed = n - finals.len();
    let auc = if finals.is_empty() {
        format!("failed ({failed}/{n})")
    } else {
        let (m, sd) = mean_sd(&finals);
        let mut cell = if n > 1 {
            format!("{m:.4} ± {sd:.4}")
        } else {
            format!("{m:.4}")
        };
        if failed > 0 {
            cell.push_str(&format!(" ({failed}/{n} failed)"));
        }
        cell
    };
    let reached: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.first_reach())
        .map(|r| r as f64)
        .collect();
    let rounds = if reached.is_empty() {
        "—".to_string()
    } else if reached.len() == n {
        format!("{:.1}", mean_sd(&reached).0)
    } else {
        format!("{:.1} ({}/{n} seeds)", mean_sd(&reached).0, reached.len())
    };
    (auc, rounds)
}

/// The paired difference of final ROC-AUCs to the reference runs (same seeds, so the same
/// held-out rows): `mean ± sd` over the seeds where both finished.
fn paired(outcomes: &[&Outcome], reference: &[&Outcome]) -> String {
    let diffs: Vec<f64> = outcomes
        .iter()
        .zip(reference)
        .filter_map(|(o, r)| Some(o.final_auc()? - r.final_auc()?))
        .collect();
    match diffs.len() {
        0 => "–".to_string(),
        1 => format!("{:+.4}", diffs[0]),
        _ => {
            let (m, sd) = mean_sd(&diffs);
            format!("{m:+.4} ± {sd:.4}")
        }
    }
}

fn run_jobs(
    jobs: &[Job],
    splits: &[Split],
    configs: &[Config],
    bases: &[String; 2],
    args: &Args,
    phase: &str,
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..args.threads.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let config = &configs[job.config];
                    let base = &bases[usize::from(job.dp)];
                    let outcome = match task_for(base, config, job.seed) {
                        Ok(task) => simulate(&task, &splits[job.split].partners, args.rounds),
                        Err(e) => Outcome {
                            aucs: Vec::new(),
                            failed: Some(format!("task: {e}")),
                            update: "?",
                            seconds: 0.0,
                        },
                    };
                    let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let result = match (&outcome.failed, outcome.final_auc()) {
                        (Some(why), _) => format!("FAILED: {why}"),
                        (None, Some(auc)) => format!(
                            "final {auc:.4}, {TARGET_AUC} {}",
                            outcome
                                .first_reach()
                                .map_or("never".to_string(), |r| format!("at round {r}"))
                        ),
                        (None, None) => "no rounds".to_string(),
                    };
                    eprintln!(
                        "[{phase} {k}/{}] split {} · {} · {} · seed {}: {result} ({:.1} s)",
                        jobs.len(),
                        &splits[job.split].label[..1],
                        config.label,
                        if job.dp { "ε = 3" } else { "no DP" },
                        job.seed,
                        outcome.seconds,
                    );
                    results.lock().expect("results")[i] = Some(outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|o| o.expect("every job ran"))
        .collect()
}

/// Groups outcomes by (split, config, dp).
fn grouped<'a>(jobs: &[Job], outcomes: &'a [Outcome]) -> Groups<'a> {
    let mut groups: Groups = BTreeMap::new();
    for (job, o) in jobs.iter().zip(outcomes) {
        groups
            .entry((job.split, job.config, job.dp))
            .or_default()
            .push(o);
    }
    groups
}

/// Outcomes by (split, configuration, DP), each in seed order.
type Groups<'a> = BTreeMap<(usize, usize, bool), Vec<&'a Outcome>>;

/// One Markdown table: a row per configuration; per privacy setting the final ROC-AUC, its
/// paired difference to FedAvg (`reference`, configuration 0 of the main runs) and the rounds
/// to the target.
fn print_table(
    title: &str,
    split: usize,
    configs: &[Config],
    groups: &Groups,
    reference: &Groups,
    args: &Args,
) {
    let (r, t) = (args.rounds, TARGET_AUC);
    println!("\n{title}\n");
    let mut header = "| strategy | local update ".to_string();
    let mut rule = "|---|---".to_string();
    for dp in [false, true] {
        if dp && !args.dp {
            continue;
        }
        let p = if dp { "ε = 3" } else { "no DP" };
        header.push_str(&format!(
            "| {p}: ROC-AUC after {r} rounds | {p}: − FedAvg (paired) | {p}: rounds to {t} "
        ));
        rule.push_str("|---|---:|---:");
    }
    println!("{header}|\n{rule}|");
    for (c, config) in configs.iter().enumerate() {
        // The local update each privacy setting ran (DP-SGD has no proximal term).
        let mut updates: Vec<&str> = Vec::new();
        for dp in [false, true] {
            for o in groups.get(&(split, c, dp)).into_iter().flatten() {
                if !updates.contains(&o.update) {
                    updates.push(o.update);
                }
            }
        }
        let mut row = format!("| {} | {} ", config.label, updates.join(" / "));
        for dp in [false, true] {
            if dp && !args.dp {
                continue;
            }
            match groups.get(&(split, c, dp)) {
                Some(outcomes) => {
                    let (auc, rounds) = cells(outcomes);
                    let diff = match reference.get(&(split, 0, dp)) {
                        Some(_) if std::ptr::eq(groups, reference) && c == 0 => {
                            "(reference)".to_string()
                        }
                        Some(r) => paired(outcomes, r),
                        None => "–".to_string(),
                    };
                    row.push_str(&format!("| {auc} | {diff} | {rounds} "));
                }
                None => row.push_str("| – | – | – "),
            }
        }
        println!("{row}|");
    }
}

/// Pooled ROC-AUC after every round, first seed, no DP: one column per configuration.
fn print_curves(title: &str, split: usize, configs: &[Config], groups: &Groups, args: &Args) {
    println!("\n{title}\n");
    let mut header = "| round ".to_string();
    let mut rule = "|---:".to_string();
    for c in configs {
        header.push_str(&format!("| {} ", c.label));
        rule.push_str("|---:");
    }
    println!("{header}|\n{rule}|");
    for round in 0..args.rounds as usize {
        let mut row = format!("| {} ", round + 1);
        for c in 0..configs.len() {
            let cell = groups
                .get(&(split, c, false))
                .and_then(|o| o.first())
                .and_then(|o| o.aucs.get(round))
                .map_or("–".to_string(), |a| format!("{a:.4}"));
            row.push_str(&format!("| {cell} "));
        }
        println!("{row}|");
    }
}

fn main() {
    let args = parse_args();
    let started = Instant::now();
    let csv = Path::new(ROOT).join("examples/data/telco_churn_ibm.csv");
    let read = |f: &str| {
        std::fs::read_to_string(Path::new(ROOT).join("examples").join(f))
            .unwrap_or_else(|e| panic!("read examples/{f}: {e}"))
    };
    let bases = [
        read("telco_churn_task.toml"),
        read("telco_churn_dp_eps3.toml"),
    ];
    let plain = TaskSpec::from_toml_str(&bases[0]).expect("telco_churn_task.toml");
    assert!(
        plain.strategy.is_default() && plain.local.is_default(),
        "telco_churn_task.toml sets a strategy or [local]; this bench appends its own"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_b).expect("split-B dir");
    let splits = [
        split_a(&csv, &dir_a, &plain),
        split_b(&csv, &dir_b, &plain, args.alpha),
    ];

    let base_seed = plain.seed;
    let seeds: Vec<u64> = (0..args.seeds as u64).map(|i| base_seed + i).collect();
    println!(
        "Server strategies on the telco churn data: {} round(s), seeds {:?}, pooled held-out ROC-AUC (exact), target {TARGET_AUC}",
        args.rounds, seeds
    );
    for split in &splits {
        println!("\nSplit {}:\n", split.label);
        println!("| partner | rows | churn rate |");
        println!("|---|---:|---:|");
        for p in &split.partners {
            println!(
                "| {} | {} | {:.1} % |",
                p.name,
                p.rows,
                100.0 * p.positives as f64 / p.rows as f64
            );
        }
    }

    let configs: Vec<Config> = ["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
        .into_iter()
        .map(Config::strategy)
        .chain([0.01, 0.1].map(Config::fedprox))
        .collect();
    let dps: &[bool] = if args.dp { &[false, true] } else { &[false] };
    let mut jobs = Vec::new();
    // DP runs are the slow ones: queue them first so the threads end together.
    for &dp in dps.iter().rev() {
        for split in 0..splits.len() {
            for config in 0..configs.len() {
                for &seed in &seeds {
                    jobs.push(Job {
                        split,
                        config,
                        dp,
                        seed,
                    });
                }
            }
        }
    }
    let outcomes = run_jobs(&jobs, &splits, &configs, &bases, &args, "main");
    let groups = grouped(&jobs, &outcomes);

    // The demo's figure: FedAvg, split A, no DP, the shipped seed.
    if let Some((_, o)) = jobs
        .iter()
        .zip(&outcomes)
        .find(|(j, _)| j.split == 0 && j.config == 0 && !j.dp && j.seed == base_seed)
        && args.rounds == 20
    {
        let auc = o.final_auc().unwrap_or(f64::NAN);
        let same = (auc - DEMO_AUC).abs() < 5e-5;
        println!(
            "\nCheck: FedAvg on split A at seed {base_seed} ends at {auc:.4}; `consortia demo` reports {DEMO_AUC} ({})",
            if same { "same" } else { "DIFFERENT" }
        );
    }
    for (i, split) in splits.iter().enumerate() {
        print_table(
            &format!("Split {}:", split.label),
            i,
            &configs,
            &groups,
            &groups,
            &args,
        );
    }
    if args.curves {
        for (i, split) in splits.iter().enumerate() {
            print_curves(
                &format!(
                    "Pooled ROC-AUC per round, split {}, seed {base_seed}, no DP:",
                    split.label
                ),
                i,
                &configs,
                &groups,
                &args,
            );
        }
    }

    if args.sweep {
        let kinds = ["fedavgm", "fedadam", "fedyogi", "fedadagrad"];
        let sweep: Vec<Config> = kinds
            .iter()
            .flat_map(|k| SWEEP_LRS.iter().map(|&lr| Config::with_lr(k, lr)))
            .collect();
        let mut jobs = Vec::new();
        for &dp in dps.iter().rev() {
            for config in 0..sweep.len() {
                for &seed in &seeds {
                    jobs.push(Job {
                        split: 1,
                        config,
                        dp,
                        seed,
                    });
                }
            }
        }
        let outcomes = run_jobs(&jobs, &splits, &sweep, &bases, &args, "sweep");
        let sweep_groups = grouped(&jobs, &outcomes);
        print_table(
            &format!(
                "Sweep of server_learning_rate η, split {}:",
                splits[1].label
            ),
            1,
            &sweep,
            &sweep_groups,
            &groups,
            &args,
        );
    }
    eprintln!(
        "\ndone in {:.1} s on {} thread(s)",
        started.elapsed().as_secs_f64(),
        args.threads
    );
}
