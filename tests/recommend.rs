//! The recommendation scenario (`consortia demo --scenario recommend`): MovieLens
//! ml-latest-small, 671 users split into three partners by `userId mod 3`, the matrix
//! factorisation of `examples/recommend_mf.toml`.
//!
//! * the bar, with the real binaries: after the task's 20 rounds the federated model,
//!   evaluated exactly on the pooled held-out ratings of the three partners, is within
//!   0.01 RMSE of a centralised ALS (the same λ and factors, [`CENTRAL_ITERATIONS`]
//!   iterations) trained in-process on the pooled training ratings of the same split,
//!   and beats on every partner's own users the ALS that partner trains on its own
//!   users alone;
//! * an update is the item part only, and one user's ratings reach what the
//!   coordinator receives only through it;
//! * user-level DP (DP-SGD over users) at ε = 8 and ε = 3, in-process: the private item
//!   part against the global mean with the partners' own user biases alone;
//! * bad rows are refused naming file, row and column.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use consortia_client::local::LocalData;
use consortia_model::models::mf::{MfModel, TrainRatings};
use consortia_model::ratings::{Catalogue, Ratings};
use consortia_model::{Evaluation, Model, RecommendationMetrics, RecommendationPartial, TaskSpec};

const RATINGS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/movielens_ratings.csv"
);
const MOVIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/data/movielens_movies.csv"
);
const MF_TASK: &str = include_str!("../examples/recommend_mf.toml");

/// Iterations of the centralised ALS (the baseline script runs 15); in-process its
/// held-out RMSE moves by under 0.001 between 15 and 30.
const CENTRAL_ITERATIONS: usize = 20;

fn task() -> TaskSpec {
    TaskSpec::from_toml_str(MF_TASK).expect("bundled task")
}

/// The three partners' ratings files (and the catalogue beside them) in `dir`.
fn split(dir: &Path) -> Vec<(String, PathBuf, usize)> {
    std::fs::copy(MOVIES, dir.join("movielens_movies.csv")).expect("catalogue");
    consortia_model::ratings::partition_by_user(Path::new(RATINGS), "userId", 3, dir)
        .expect("split")
}

fn show(what: &str, m: &RecommendationMetrics) -> String {
    format!(
        "{what:<40} ratings {:>6}  RMSE {:.4}  MAE {:.4}  users {:>3}  NDCG@10 {:.4}  recall@10 {:.4}",
        m.examples, m.rmse, m.mae, m.users, m.ndcg_at_10, m.recall_at_10
    )
}

/// One partner's ratings, split as its agent splits them.
struct Part {
    train: Ratings,
    test: Ratings,
}

fn parts(task: &TaskSpec, files: &[(String, PathBuf, usize)]) -> Vec<Part> {
    let spec = task.schema.ratings.as_ref().expect("ratings");
    files
        .iter()
        .map(|(_, path, _)| {
            let catalogue = Catalogue::load(spec, path).expect("catalogue");
            let all = Ratings::load(path, task, &catalogue).expect("ratings");
            let (train, test) = all.split_per_user(task.holdout_fraction, task.seed);
            Part { train, test }
        })
        .collect()
}

/// The pooled ratings of several partners (users renumbered).
fn pool(sets: &[&Ratings]) -> Ratings {
    let mut out = Ratings {
        users: Vec::new(),
        rows: Vec::new(),
        unknown_items: 0,
    };
    for s in sets {
        let base = out.users.len() as u32;
        out.users.extend(&s.users);
        out.rows
            .extend(s.rows.iter().map(|r| consortia_model::ratings::Rating {
                user: r.user + base,
                ..*r
            }));
    }
    out
}

/// Centralised biased ALS on `train` (alternating exact user and item steps).
fn central_als(task: &TaskSpec, train: &Ratings, iterations: usize) -> MfModel {
    let mut model = MfModel::from_task(
        task,
        consortia_model::initial_model(task)
            .expect("model")
            .params(),
    )
    .expect("mf");
    let grouped = TrainRatings::new(train, model.items());
    let lambda = task.model.l2;
    for _ in 0..iterations {
        let users = model.solve_users(&grouped, lambda);
        let delta = model.local_item_delta(&grouped, &users, lambda);
        model
            .params_mut()
            .iter_mut()
            .zip(&delta)
            .for_each(|(p, d)| *p += d);
    }
    model
}

/// `model`'s exact evaluation on `test`, users fitted on `train`.
fn evaluate(
    task: &TaskSpec,
    model: &MfModel,
    train: &Ratings,
    test: &Ratings,
) -> RecommendationPartial {
    let grouped = TrainRatings::new(train, model.items());
    let users = model.solve_users(&grouped, task.model.l2);
    model.evaluate_ratings(&grouped, &users, test)
}

fn metrics(p: &RecommendationPartial) -> RecommendationMetrics {
    RecommendationMetrics::from_partial(p)
}

/// The federation in one process: every partner's agent-side data and local update,
/// the coordinator's example-weighted FedAvg step. Returns the final shared parameters.
fn in_process(task: &TaskSpec, files: &[(String, PathBuf, usize)]) -> Vec<f64> {
    let spec = task.privacy_spec().expect("privacy");
    let update = consortia_client::training::build(task, spec.as_ref()).expect("update");
    let mut data: Vec<LocalData> = files
        .iter()
        .map(|(name, path, _)| LocalData::load(path, task, name).expect("partner"))
        .collect();
    let mut global = consortia_model::initial_model(task).expect("model");
    for round in 1..=u64::from(task.rounds) {
        let mut sum = vec![0.0; global.param_count()];
        let mut weight = 0.0;
        for d in &mut data {
            let rows = d.train_rows() as f64;
            let c = d
                .contribute(
                    update.as_ref(),
                    global.as_ref(),
                    round,
                    &[],
                    &[],
                    &mut |_| {},
                )
                .expect("contribution");
            sum.iter_mut()
                .zip(&c.vector)
                .for_each(|(s, v)| *s += rows * v);
            weight += rows;
        }
        global
            .params_mut()
            .iter_mut()
            .zip(&sum)
            .for_each(|(p, s)| *p += s / weight);
    }
    global.params().to_vec()
}

fn pooled_eval(
    task: &TaskSpec,
    params: &[f64],
    parts: &[Part],
) -> (RecommendationPartial, Vec<RecommendationPartial>) {
    let model = MfModel::from_task(task, params).expect("mf");
    let mut total = RecommendationPartial::empty();
    let mut each = Vec::new();
    for p in parts {
        let e = evaluate(task, &model, &p.train, &p.test);
        total.merge(&e).expect("merge");
        each.push(e);
    }
    (total, each)
}

#[test]
#[ignore = "tuning harness: cargo test --test recommend in_process -- --ignored --nocapture"]
fn in_process_federation_against_centralised_and_local_only() {
    let dir = tempfile::tempdir().expect("temp");
    let files = split(dir.path());
    let task = task();
    let parts = parts(&task, &files);
    let started = Instant::now();
    let params = in_process(&task, &files);
    println!(
        "in-process federation {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (fed, fed_each) = pooled_eval(&task, &params, &parts);
    let trains: Vec<&Ratings> = parts.iter().map(|p| &p.train).collect();
    let central = central_als(&task, &pool(&trains), CENTRAL_ITERATIONS);
    let (cen, cen_each) = pooled_eval(&task, central.params(), &parts);
    // The split, for the NumPy baseline (BENCHMARKS.md): one CSV of every rating with
    // its partner and whether it is held out.
    if let Some(out) = std::env::var_os("CONSORTIA_MF_SPLIT") {
        let mut text = String::from("partner,userId,item,rating,test\n");
        for (i, p) in parts.iter().enumerate() {
            for (set, test) in [(&p.train, 0), (&p.test, 1)] {
                for r in &set.rows {
                    let user = set.users[r.user as usize];
                    text.push_str(&format!("{i},{user},{},{},{test}\n", r.item, r.value));
                }
            }
        }
        std::fs::write(out, text).expect("split file");
    }
    println!("{}", show("federated (in-process)", &metrics(&fed)));
    println!("{}", show("centralised ALS", &metrics(&cen)));
    for (i, p) in parts.iter().enumerate() {
        let local = central_als(&task, &p.train, CENTRAL_ITERATIONS);
        let l = evaluate(&task, &local, &p.train, &p.test);
        println!(
            "partner {i}: federated {:.4}  centralised {:.4}  local-only {:.4}",
            metrics(&fed_each[i]).rmse,
            metrics(&cen_each[i]).rmse,
            metrics(&l).rmse
        );
    }
}

/// A federation of real processes whose partners hold the MovieLens users by
/// `userId mod 3` (partners `users-0`, `users-1`, `users-2`), each with the catalogue.
fn movielens_federation(task_toml: &str) -> Federation {
    // The split column the common harness splits by: `partner`, added to every row.
    let tmp = tempfile::tempdir().expect("temp");
    let files = split(tmp.path());
    let joined = tmp.path().join("all.csv");
    let mut text = String::from("partner,userId,movieId,rating,timestamp\n");
    for (name, path, _) in &files {
        let body = std::fs::read_to_string(path).expect("part");
        for line in body.lines().skip(1) {
            text.push_str(&format!("{name},{line}\n"));
        }
    }
    std::fs::write(&joined, text).expect("joined");
    let fed = Federation::with_data(task_toml, &joined, "partner");
    std::fs::copy(MOVIES, fed.path("data").join("movielens_movies.csv")).expect("catalogue");
    std::fs::write(
        fed.path("policy.toml"),
        format!("{PERMISSIVE_POLICY}allowed_models = [\"matrix_factorization\"]\n"),
    )
    .expect("policy");
    fed
}

#[test]
fn federated_mf_is_within_the_bar_of_centralised_als_and_beats_every_local_only_model() {
    let mut fed = movielens_federation(MF_TASK);
    let names: Vec<&str> = fed.partners.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["users-0", "users-1", "users-2"]);
    let started = Instant::now();
    fed.run_to_completion(Duration::from_secs(600));
    let federation_secs = started.elapsed().as_secs_f64();
    let out = fed.read(&fed.coordinator_out(1));
    assert!(
        out.contains("NDCG@10"),
        "the coordinator prints recommendation metrics\n{out}"
    );

    // The final model, scored by each partner's own data as its agent scores it.
    let (task, model, _) = final_model(&fed);
    assert_eq!(task.rounds, 20);
    let mut federated = RecommendationPartial::empty();
    let mut fed_each = Vec::new();
    for (name, path) in &fed.partners {
        let mut local = LocalData::load(path, &task, name).expect("partner data");
        match local.evaluate(model.as_ref(), &[], &[]).expect("evaluate") {
            Evaluation::Recommendation(p) => {
                federated.merge(&p).expect("merge");
                fed_each.push(p);
            }
            other => panic!("an MF evaluates as recommendation, not {}", other.kind()),
        }
    }
    // The same split, made here.
    let files: Vec<(String, PathBuf, usize)> = fed
        .partners
        .iter()
        .map(|(n, p)| (n.clone(), p.clone(), 0))
        .collect();
    let parts = parts(&task, &files);
    let (again, _) = pooled_eval(&task, model.params(), &parts);
    assert_eq!(
        again,
        RecommendationPartial {
            unknown_items: 0,
            ..federated.clone()
        }
    );

    let trains: Vec<&Ratings> = parts.iter().map(|p| &p.train).collect();
    let started = Instant::now();
    let central = central_als(&task, &pool(&trains), CENTRAL_ITERATIONS);
    let central_secs = started.elapsed().as_secs_f64();
    let (cen, cen_each) = pooled_eval(&task, central.params(), &parts);
    let (fm, cm) = (metrics(&federated), metrics(&cen));
    println!("{}", show("federated, 20 rounds", &fm));
    println!(
        "{}",
        show(
            &format!("centralised ALS, {CENTRAL_ITERATIONS} iterations"),
            &cm
        )
    );
    println!(
        "federation {federation_secs:.1} s (processes, PKI and all), centralised ALS {central_secs:.1} s"
    );
    assert_eq!(fm.examples, cm.examples);
    assert_eq!(
        fm.examples, 20_256,
        "20 % of each user's ratings, rounded up"
    );
    assert!(
        (fm.rmse - cm.rmse).abs() <= 0.01,
        "federated RMSE {:.4} vs centralised {:.4}: more than 0.01 apart",
        fm.rmse,
        cm.rmse
    );
    assert!(fm.ndcg_at_10 > 0.05 && fm.recall_at_10 > 0.05, "{fm:?}");
    for (i, part) in parts.iter().enumerate() {
        let local = central_als(&task, &part.train, CENTRAL_ITERATIONS);
        let l = metrics(&evaluate(&task, &local, &part.train, &part.test));
        let (f, c) = (metrics(&fed_each[i]), metrics(&cen_each[i]));
        println!(
            "{}: federated {:.4}, centralised {:.4}, local-only {:.4} on its own users",
            files[i].0, f.rmse, c.rmse, l.rmse
        );
        assert!(
            f.rmse < l.rmse,
            "{}: federated {:.4} does not beat its local-only model {:.4}",
            files[i].0,
            f.rmse,
            l.rmse
        );
    }

    // Scoring where the data lives: the exported model and a partner's own ratings give
    // each of its users ten items they have not rated.
    let exported = fed.path("model.json");
    let status = std::process::Command::new(EXE)
        .args(["model", "export", "--state"])
        .arg(fed.path("state"))
        .arg("--out")
        .arg(&exported)
        .status()
        .expect("export");
    assert!(status.success());
    let recs = fed.path("recs.csv");
    let (_, data) = &fed.partners[0];
    let out = std::process::Command::new(EXE)
        .args(["score", "--model"])
        .arg(&exported)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&recs)
        .output()
        .expect("score");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&recs).expect("recommendations");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("userId,rank,movieId,predicted_rating"));
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let users: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(rows.len(), users.len() * 10);
    assert!(users.iter().all(|u| u.parse::<i64>().unwrap() % 3 == 0));
    let rated: std::collections::BTreeSet<(String, String)> = std::fs::read_to_string(data)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    assert!(
        rows.iter()
            .all(|r| !rated.contains(&(r[0].clone(), r[2].clone()))),
        "a user is recommended an item they rated"
    );
}

/// What a partner sends for a round is the item part only (1 + items · (factors + 1)
/// values), and changing one user's ratings changes it only at the global mean and at
/// the items that user rated: the other users' factors, which never leave the partner,
/// do not depend on that user, and nothing else of theirs is in the update. The
/// evaluation report holds sums only.
#[test]
fn an_update_is_the_item_part_and_one_users_ratings_reach_it_only_through_their_items() {
    let dir = tempfile::tempdir().expect("temp");
    let files = split(dir.path());
    let task = task();
    let (name, path, _) = &files[1];
    let update = consortia_client::training::build(&task, None).expect("update");
    let global = consortia_model::initial_model(&task).expect("model");
    let items = 9066;
    assert_eq!(global.param_count(), 1 + items * 11);
    assert!(global.param_count() <= consortia_model::task::MAX_MODEL_PARAMS);
    let run = |path: &Path| {
        let mut d = LocalData::load(path, &task, name).expect("partner");
        let c = d
            .contribute(update.as_ref(), global.as_ref(), 1, &[], &[], &mut |_| {})
            .expect("contribution");
        let e = d.evaluate(global.as_ref(), &[], &[]).expect("evaluation");
        (c.vector, d.train_rows(), e)
    };
    let (before, rows, eval) = run(path);
    assert_eq!(
        before.len(),
        global.param_count(),
        "the item part, nothing more"
    );
    let json = serde_json::to_value(&eval).expect("json");
    let keys: Vec<&String> = json.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "kind",
            "n",
            "sum_abs_error",
            "sum_ndcg",
            "sum_recall",
            "sum_sq_error",
            "unknown_items",
            "users"
        ]
    );

    // User 4 (partner users-1) rates differently: every rating r becomes 5.5 − r.
    let text = std::fs::read_to_string(path).expect("ratings");
    let mut rated = std::collections::BTreeSet::new();
    let changed: String = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            if i > 0 && f[0] == "4" {
                rated.insert(f[1].parse::<i64>().unwrap());
                let r: f64 = f[2].parse().unwrap();
                format!("{},{},{},{}\n", f[0], f[1], 5.5 - r, f[3])
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(!rated.is_empty());
    let other = dir.path().join("changed.csv");
    std::fs::write(&other, changed).expect("write");
    let (after, rows_after, _) = run(&other);
    assert_eq!(
        rows, rows_after,
        "the same number of ratings, the same weight"
    );
    let catalogue = Catalogue::load(task.schema.ratings.as_ref().unwrap(), path).unwrap();
    let allowed: std::collections::BTreeSet<usize> = std::iter::once(0)
        .chain(rated.iter().flat_map(|id| {
            let i = catalogue.index_of(*id).unwrap() as usize;
            std::iter::once(1 + i).chain((0..10).map(move |j| 1 + items + i * 10 + j))
        }))
        .collect();
    let differs: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(!differs.is_empty(), "the user's ratings do count");
    let outside: Vec<&usize> = differs.iter().filter(|i| !allowed.contains(i)).collect();
    assert!(
        outside.is_empty(),
        "changed outside the user's items: {outside:?}"
    );
}

/// `consortia score` on a partner's ratings file, returning its output and stderr.
fn score_recommendations(
    model: &Path,
    data: &Path,
    out: &Path,
    state: Option<&Path>,
) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(EXE);
    cmd.args(["score", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    if let Some(dir) = state {
        cmd.arg("--state").arg(dir);
    }
    let run = cmd.output().expect("score");
    let recs = std::fs::read_to_string(out).unwrap_or_default();
    let _ = std::fs::remove_file(out);
    (
        run.status.success(),
        recs,
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

/// The `user,rank,item,predicted_rating` rows `consortia score` writes for `users`.
fn recommendation_rows(
    task: &TaskSpec,
    params: &[f64],
    data: &Path,
    users: &consortia_model::models::mf::UserFactors,
) -> String {
    let model = MfModel::from_task(task, params).expect("mf");
    let catalogue = Catalogue::load(task.schema.ratings.as_ref().unwrap(), data).unwrap();
    let ratings = Ratings::load(data, task, &catalogue).unwrap();
    let grouped = TrainRatings::new(&ratings, model.items());
    let mut text = String::from("userId,rank,movieId,predicted_rating\n");
    for (u, id) in ratings.users.iter().enumerate() {
        let (seen, _) = grouped.by_user.of(u);
        for (rank, i) in model.top_k(users, u, seen, 10).into_iter().enumerate() {
            let r = model.predict_rating(users, u, i as usize);
            let item = catalogue.id(i).unwrap();
            text.push_str(&format!("{id},{},{item},{r:.4}\n", rank + 1));
        }
    }
    text
}

/// The agent keeps its users' factors — fitted to all of each user's ratings against
/// the round's global model — in its state directory, privately (0600), and
/// `consortia score --state` recommends with them: they equal the factors fitted from
/// the same ratings file to 1e-9, and it is the kept factors that are used. Factors of
/// another round are not used (a note, and the users are fitted); none kept is a note
/// too; a damaged file or one of another task is refused naming the file.
#[test]
fn score_uses_the_users_factors_the_agent_keeps_in_its_state_directory() {
    use consortia_client::user_factors::{self, StoredUsers};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp");
    let files = split(dir.path());
    let task = task();
    let (name, path, _) = &files[2];
    // The model of round 1: one ALS round of this partner from the initial model.
    let global = consortia_model::initial_model(&task).expect("model");
    let update = consortia_client::training::build(&task, None).expect("update");
    let mut local = LocalData::load(path, &task, name).expect("partner");
    let delta = local
        .contribute(update.as_ref(), global.as_ref(), 1, &[], &[], &mut |_| {})
        .expect("contribution")
        .vector;
    let params: Vec<f64> = global
        .params()
        .iter()
        .zip(&delta)
        .map(|(g, d)| g + d)
        .collect();
    let model = consortia_model::model_with_params(&task, &params).expect("model");
    let hash = task.canonical_hash().expect("hash");
    let state = dir.path().join("agent-state");
    let kept = local
        .keep_user_factors(model.as_ref(), &state, hash, 1)
        .expect("kept");
    assert_eq!(kept, 224, "users 2, 5, … of ml-latest-small");
    let file = user_factors::path(&state, &task.name);
    let mode = std::fs::metadata(&file).expect("kept").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the users' factors are private");
    let stored = StoredUsers::read(&file).expect("read").expect("kept");
    assert_eq!(stored.model_round, 1);

    // What `consortia score` fits without --state: each user on all their ratings.
    let mf = MfModel::from_task(&task, &params).expect("mf");
    let catalogue = Catalogue::load(task.schema.ratings.as_ref().unwrap(), path).unwrap();
    let ratings = Ratings::load(path, &task, &catalogue).unwrap();
    let refit = mf.solve_users(&TrainRatings::new(&ratings, mf.items()), task.model.l2);
    assert_eq!(stored.ids, ratings.users);
    for u in 0..refit.len() {
        assert!(
            (stored.users.bias[u] - refit.bias[u]).abs() <= 1e-9,
            "user {u}"
        );
        for (a, b) in stored.users.of(u).iter().zip(refit.of(u)) {
            assert!((a - b).abs() <= 1e-9, "user {u}: {a} vs {b}");
        }
    }

    // An exported model of round 1 (the fields `consortia model export` writes).
    let export = |round: u64| {
        let doc = serde_json::json!({
            "task": task.name,
            "task_toml": task.to_toml_string().expect("toml"),
            "task_hash": hex::encode(hash),
            "round": round,
            "parameters": params,
            "standardization": null,
        });
        let f = dir.path().join(format!("model-{round}.json"));
        std::fs::write(&f, doc.to_string()).expect("model file");
        f
    };
    let round_1 = export(1);
    let out = dir.path().join("recs.csv");
    let (ok, fitted, err) = score_recommendations(&round_1, path, &out, None);
    assert!(ok, "{err}");
    let same = |a: &str, b: &str| a == b;
    assert!(
        same(&fitted, &recommendation_rows(&task, &params, path, &refit)),
        "`consortia score` recommends with the users fitted from the file"
    );
    let (ok, with_kept, err) = score_recommendations(&round_1, path, &out, Some(&state));
    assert!(ok, "{err}");
    assert!(
        err.contains("users' factors of 224 users are the agent's"),
        "{err}"
    );
    assert!(
        same(&with_kept, &fitted),
        "the kept factors are those fitted from the file"
    );

    // It is the kept factors that score: kept factors changed in place (each user's
    // factors negated) change the recommendations to theirs.
    let mut changed = stored.clone();
    let negated: Vec<f64> = (0..changed.users.len())
        .flat_map(|u| changed.users.of(u).iter().map(|v| -v).collect::<Vec<_>>())
        .collect();
    changed.users = consortia_model::models::mf::UserFactors::from_parts(
        changed.users.factors(),
        changed.users.bias.clone(),
        negated,
    )
    .expect("factors");
    changed.write(&file).expect("write");
    let (ok, recs, err) = score_recommendations(&round_1, path, &out, Some(&state));
    assert!(ok, "{err}");
    assert!(
        same(
            &recs,
            &recommendation_rows(&task, &params, path, &changed.users)
        ),
        "the kept factors are used"
    );
    assert!(
        !same(&recs, &fitted),
        "other factors, other recommendations"
    );

    // Factors fitted against another round's model are not used.
    let round_2 = export(2);
    let (ok, recs, err) = score_recommendations(&round_2, path, &out, Some(&state));
    assert!(ok, "{err}");
    assert!(
        err.contains("fitted against the model of round 1, not round 2"),
        "{err}"
    );
    assert!(same(&recs, &fitted), "fitted against the model scored");
    // None kept: the users are fitted, with a note.
    let empty = dir.path().join("empty-state");
    let (ok, recs, err) = score_recommendations(&round_1, path, &out, Some(&empty));
    assert!(ok, "{err}");
    assert!(
        err.contains("holds no users' factors of task `movielens-mf`"),
        "{err}"
    );
    assert!(same(&recs, &fitted), "fitted from the file");

    // A damaged file, or one of another task, is refused naming it.
    let shown = file.display().to_string();
    let mut bytes = std::fs::read(&file).expect("kept");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).expect("damage");
    let (ok, recs, err) = score_recommendations(&round_1, path, &out, Some(&state));
    assert!(!ok && recs.is_empty());
    assert!(
        err.contains(&shown) && err.contains("damaged") && err.contains("delete it"),
        "{err}"
    );
    StoredUsers {
        task_hash: [9; 32],
        ..stored
    }
    .write(&file)
    .expect("write");
    let (ok, recs, err) = score_recommendations(&round_1, path, &out, Some(&state));
    assert!(!ok && recs.is_empty());
    assert!(
        err.contains(&shown) && err.contains("another task"),
        "{err}"
    );
}

/// A ratings row whose user or item id is not an integer, or whose rating is off the
/// task's scale, is refused naming the file, row and column; a catalogue other than the
/// task's is refused naming it; ratings of items outside the catalogue are counted.
#[test]
fn bad_ratings_are_refused_naming_file_row_and_column() {
    let dir = tempfile::tempdir().expect("temp");
    std::fs::copy(MOVIES, dir.path().join("movielens_movies.csv")).expect("catalogue");
    let task = task();
    let path = dir.path().join("users-0.csv");
    let file = path.display().to_string();
    let header = "userId,movieId,rating,timestamp";
    let good = "3,1,4.0,1260759144\n3,2,3.5,1260759144\n3,3,2.0,1260759144\n3,5,1.0,1260759144\n3,6,5.0,1260759144";
    for (bad, column, says) in [
        ("u3,31,2.5,1", "userId", "not an integer id"),
        ("3,31.5,2.5,1", "movieId", "not an integer id"),
        ("3,31,5.5,1", "rating", "outside the scale [0.5, 5]"),
        ("3,31,0,1", "rating", "outside the scale [0.5, 5]"),
        ("3,31,good,1", "rating", "not a finite number"),
    ] {
        std::fs::write(&path, format!("{header}\n{good}\n{bad}\n")).unwrap();
        let err = match LocalData::load(&path, &task, "users-0") {
            Ok(_) => panic!("{bad} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("{file}:7: row 6, column `{column}`")) && err.contains(says),
            "{bad}: {err}"
        );
    }
    // An item outside the catalogue is counted, and reported with the evaluation.
    std::fs::write(&path, format!("{header}\n{good}\n3,999999999,4.0,1\n")).unwrap();
    let mut d = LocalData::load(&path, &task, "users-0").expect("loads");
    let global = consortia_model::initial_model(&task).expect("model");
    match d.evaluate(global.as_ref(), &[], &[]).expect("evaluation") {
        Evaluation::Recommendation(p) => assert_eq!(p.unknown_items, 1),
        other => panic!("{}", other.kind()),
    }
    // Another catalogue: refused, naming it and both hashes.
    std::fs::write(dir.path().join("movielens_movies.csv"), "movieId\n1\n2\n").unwrap();
    let err = LocalData::load(&path, &task, "users-0")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("movielens_movies.csv") && err.contains("the task pins"),
        "{err}"
    );
}

/// `consortia demo --scenario recommend` splits the users by userId mod 3, gives every
/// partner the catalogue and prints the recommendation metrics of every round.
#[test]
fn the_recommend_demo_runs_the_scenario_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("demo");
    let out = std::process::Command::new(EXE)
        .args([
            "demo",
            "--scenario",
            "recommend",
            "--rounds",
            "2",
            "--workdir",
        ])
        .arg(&work)
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (partner, rows) in [
        ("users-0", 34_837),
        ("users-1", 35_011),
        ("users-2", 30_156),
    ] {
        assert!(
            stdout.contains(&format!("partner {partner:<16} {rows:>5} rows")),
            "{stdout}"
        );
    }
    assert!(work.join("data/movielens_movies.csv").is_file());
    for needle in ["NDCG@10", "recall@10", "task complete after 2 rounds"] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }

    // Each agent kept its users' factors, privately, fitted against the final model
    // (of round 2, which the final evaluation sent), and `consortia score --state`
    // recommends with them what fitting the users from the same file recommends.
    use std::os::unix::fs::PermissionsExt;
    let state = work.join("agent-users-0-state");
    let kept = consortia_client::user_factors::path(&state, "movielens-mf");
    let mode = std::fs::metadata(&kept)
        .unwrap_or_else(|e| panic!("{}: {e}", kept.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = consortia_client::user_factors::StoredUsers::read(&kept)
        .expect("readable")
        .expect("kept");
    assert_eq!((stored.model_round, stored.ids.len()), (2, 223));
    let model = work.join("model.json");
    let export = std::process::Command::new(EXE)
        .args(["model", "export", "--state"])
        .arg(work.join("state"))
        .arg("--out")
        .arg(&model)
        .output()
        .expect("export");
    assert!(export.status.success(), "{export:?}");
    let data = work.join("data/users-0.csv");
    let out = work.join("recs.csv");
    let (ok, fitted, err) = score_recommendations(&model, &data, &out, None);
    assert!(ok, "{err}");
    let (ok, with_kept, err) = score_recommendations(&model, &data, &out, Some(&state));
    assert!(ok, "{err}");
    assert!(
        err.contains("users' factors of 223 users are the agent's"),
        "{err}"
    );
    assert!(
        with_kept == fitted,
        "the agent's factors recommend what fitted ones do"
    );
}

/// Users sampled per DP-SGD step (Poisson rate), steps per round, clip norm and
/// learning rate of the private runs (see BENCHMARKS.md for the search).
const DP_SAMPLING: f64 = 1.0;
const DP_STEPS: u64 = 1;
const DP_CLIP: f64 = 10.0;
const DP_LR: f64 = 0.25;

/// The smallest noise multiplier (to 0.01) at which the task's whole spend — the
/// feature-statistics release and `rounds · steps` DP-SGD steps over users — stays
/// within `epsilon` at δ = 1e-5.
fn calibrated_z(rounds: u64, epsilon: f64) -> f64 {
    let spent = |z: f64| {
        let mut a = consortia_dp::accountant::RdpAccountant::new();
        a.compose(
            consortia_dp::DpEvent::Gaussian {
                noise_multiplier: consortia_dp::release::DEFAULT_STATISTICS_NOISE_MULTIPLIER,
            },
            1,
        )
        .unwrap();
        a.compose(
            consortia_dp::DpEvent::PoissonSampledGaussian {
                sampling_rate: DP_SAMPLING,
                noise_multiplier: z,
            },
            rounds * DP_STEPS,
        )
        .unwrap();
        a.epsilon(1e-5).unwrap()
    };
    let mut z = 0.3;
    while spent(z) > epsilon {
        z += 0.01;
    }
    z
}

fn dp_task(epsilon: f64) -> (TaskSpec, f64) {
    let mut task = task();
    let z = calibrated_z(u64::from(task.rounds), epsilon);
    task.learning_rate = DP_LR;
    task.privacy = Some(
        toml::from_str(&format!(
            "unit = \"record\"\nplacement = \"local\"\nepsilon = {epsilon}\ndelta = 1e-5\n\
             clip_norm = {DP_CLIP}\nnoise_multiplier = {z}\nsampling_rate = {DP_SAMPLING}\n\
             steps_per_round = {DP_STEPS}\n"
        ))
        .expect("privacy table"),
    );
    task.validate().expect("valid");
    (task, z)
}

/// User-level DP (DP-SGD over users, in-process with the agents' own update and data
/// code and the coordinator's FedAvg step) at ε = 8 and ε = 3 (δ = 1e-5, the
/// statistics release included): the private item part improves on the global mean
/// with the partners' own user biases alone at ε = 8 and does not make it worse at
/// ε = 3. The goal, RMSE below 0.95, is met narrowly at ε = 8 and missed at
/// ε = 3 (BENCHMARKS.md, section 10).
#[test]
fn user_level_dp_at_epsilon_8_and_3_learns_the_item_part() {
    let dir = tempfile::tempdir().expect("temp");
    let files = split(dir.path());
    let plain = task();
    let parts = parts(&plain, &files);
    let mean_only = {
        let mut p = consortia_model::initial_model(&plain)
            .expect("model")
            .params()
            .to_vec();
        let (sum, n) = parts
            .iter()
            .flat_map(|p| &p.train.rows)
            .fold((0.0, 0.0), |(s, n), r| (s + r.value, n + 1.0));
        p[0] = sum / n;
        p.iter_mut().skip(1).for_each(|v| *v = 0.0);
        metrics(&pooled_eval(&plain, &p, &parts).0)
    };
    println!("{}", show("global mean and user biases only", &mean_only));
    for epsilon in [8.0, 3.0] {
        let (task, z) = dp_task(epsilon);
        let params = in_process(&task, &files);
        let m = metrics(&pooled_eval(&task, &params, &parts).0);
        println!(
            "{}",
            show(&format!("user-level DP ε {epsilon} (z {z:.2})"), &m)
        );
        // Measured (BENCHMARKS.md, section 10): about 0.945–0.949 at ε = 8 and 0.955–0.961
        // at ε = 3, the noise's own spread included. Checked here: the private item
        // part helps clearly at ε = 8 and does not hurt at ε = 3.
        let bar = if epsilon >= 8.0 {
            mean_only.rmse - 0.01
        } else {
            mean_only.rmse + 0.005
        };
        assert!(
            m.rmse < bar,
            "ε {epsilon}: RMSE {:.4}, not below {bar:.4}",
            m.rmse
        );
    }
}

/// The smallest noise multiplier (to 0.01) at which `rounds` partner-level DP-FedAvg
/// rounds (one `Gaussian { z }` each; the partner unit releases no statistics and no
/// evaluation) stay within `epsilon` at δ = 1e-5.
fn calibrated_partner_z(rounds: u64, epsilon: f64) -> f64 {
    let spent = |z: f64| {
        let mut a = consortia_dp::accountant::RdpAccountant::new();
        a.compose(
            consortia_dp::DpEvent::Gaussian {
                noise_multiplier: z,
            },
            rounds,
        )
        .unwrap();
        a.epsilon(1e-5).unwrap()
    };
    let mut z = 0.3;
    while spent(z) > epsilon {
        z += 0.01;
    }
    z
}

/// The bundled task under partner-level DP (`placement`, clip norm `clip`, noise
/// multiplier `z`, budget `epsilon`).
fn partner_dp_task(placement: &str, epsilon: f64, clip: f64, z: f64) -> TaskSpec {
    let mut task = task();
    task.secure_aggregation = placement == "distributed";
    task.privacy = Some(
        toml::from_str(&format!(
            "unit = \"partner\"\nplacement = \"{placement}\"\nepsilon = {epsilon}\n\
             delta = 1e-5\nclip_norm = {clip}\nnoise_multiplier = {z}\n"
        ))
        .expect("privacy table"),
    );
    task.validate().expect("valid");
    task
}

/// Partner-level DP with local noise (DP-FedAvg around the ALS item step, in-process
/// with the agents' own update and data code and the coordinator's FedAvg step) at
/// ε = 8 and ε = 3 over the task's 20 rounds (δ = 1e-5), for each clip norm of
/// `CONSORTIA_MF_PARTNER_CLIPS` (comma-separated; default 0.01,0.1,1): RMSE on the
/// pooled held-out ratings against the global mean with the partners' own user biases
/// (BENCHMARKS.md, section 10).
#[test]
#[ignore = "measurement: cargo test --test recommend partner_level -- --ignored --nocapture"]
fn partner_level_dp_at_epsilon_8_and_3() {
    let dir = tempfile::tempdir().expect("temp");
    let files = split(dir.path());
    let plain = task();
    let parts = parts(&plain, &files);
    let clips: Vec<f64> = std::env::var("CONSORTIA_MF_PARTNER_CLIPS")
        .unwrap_or_else(|_| "0.01,0.1,1".into())
        .split(',')
        .map(|c| c.trim().parse().expect("a clip norm"))
        .collect();
    for epsilon in [8.0, 3.0] {
        let z = calibrated_partner_z(u64::from(plain.rounds), epsilon);
        for &clip in &clips {
            let task = partner_dp_task("local", epsilon, clip, z);
            let params = in_process(&task, &files);
            let m = metrics(&pooled_eval(&task, &params, &parts).0);
            println!(
                "{}",
                show(
                    &format!("partner-level DP ε {epsilon} (z {z:.2}, C {clip})"),
                    &m
                )
            );
        }
    }
}

/// Under secure aggregation the same model trains: every update is encrypted (the
/// 99,727 shared values fit the model-size limit) and the decrypted sums step the
/// model as the plaintext ones do.
#[test]
fn secure_aggregation_trains_the_matrix_factorisation() {
    let mut spec = task();
    spec.rounds = 3;
    spec.secure_aggregation = true;
    let mut fed = movielens_federation(&spec.to_toml_string().expect("task"));
    fed.run_to_completion(Duration::from_secs(600));
    let out = fed.read(&fed.coordinator_out(1));
    let line = out
        .lines()
        .find(|l| l.starts_with("final model (round 3)"))
        .unwrap_or_else(|| panic!("no final evaluation\n{out}"));
    let rmse: f64 = line
        .split("RMSE ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(rmse < 0.92, "{line}");
    for (name, _) in &fed.partners {
        let log = fed.read(&fed.path(&format!("logs/{name}.out")))
            + &fed.read(&fed.path(&format!("logs/{name}.err")));
        assert!(log.contains("encrypted update sent"), "{name}:\n{log}");
    }
}

/// Under `[privacy]` (user-level DP-SGD, the default σ_e = 10) the recommender's final
/// model is evaluated privately: every partner releases noised per-user sums (mean errors
/// over the rating scale, NDCG@10, recall@10), the coordinator reports them over users,
/// and the release is charged in each partner's own ledger and in the coordinator's. Two
/// rounds keep it short.
#[test]
fn a_private_recommendation_task_reports_a_noised_evaluation_charged_in_both_ledgers() {
    let (mut spec, _) = dp_task(8.0);
    spec.rounds = 2;
    let mut fed = movielens_federation(&spec.to_toml_string().expect("task"));
    fed.run_to_completion(Duration::from_secs(600));
    let out = fed.read(&fed.coordinator_out(1));
    assert!(
        out.contains("final model (round 2)") && out.contains("noised per-user sums"),
        "{out}\n{}",
        fed.logs()
    );
    let store = consortia_coordinator::store::Store::open(&fed.path("state")).expect("store");
    let records = store.all_metrics().expect("metrics");
    assert_eq!(records.len(), 1, "the final model only");
    let consortia_model::TaskMetrics::Recommendation(m) = records[0].metrics else {
        panic!("recommendation metrics: {:?}", records[0].metrics)
    };
    drop(store);
    // 671 users, each with held-out ratings; per partner the count's noise has standard
    // deviation √6·σ_e ≈ 24.5, ≈ 42 over three: 300 is more than 7 of them.
    assert!(m.examples.abs_diff(671) < 300, "{m:?}");
    assert!(
        m.users > 0 && m.rmse.is_finite() && m.ndcg_at_10.is_finite(),
        "{m:?}"
    );
    assert!((0.0..=1.0).contains(&m.ndcg_at_10) && (0.0..=1.0).contains(&m.recall_at_10));

    // The final evaluation, asked in round 3, charged once in every ledger.
    common::assert_one_private_evaluation(&fed, 3);
}

/// Runs `task` (partner-level DP, two rounds) on the MovieLens federation and checks
/// what every partner's own ledger and the coordinator's record: exactly the task's
/// round events under `mechanism`, for rounds 1 and 2 and nothing else (the partner
/// unit releases no statistics and no evaluation). Returns the federation and the
/// stored final model's exact metrics on the pooled held-out ratings (the coordinator
/// reports none under the partner unit).
fn partner_dp_federation(task: &TaskSpec, mechanism: &str) -> (Federation, RecommendationMetrics) {
    let mut fed = movielens_federation(&task.to_toml_string().expect("task"));
    let started = Instant::now();
    fed.run_to_completion(Duration::from_secs(600));
    let secs = started.elapsed().as_secs_f64();
    let spec = task.privacy_spec().expect("privacy").expect("private");
    let events: Vec<_> = spec
        .round_events(1000)
        .expect("events")
        .into_iter()
        .map(|(e, n)| consortia_ledger::StoredEvent::from_dp(e, n))
        .collect();
    let check = |who: &str, entries: &[consortia_ledger::LedgerEntry]| {
        let charged: Vec<(u64, &str)> = entries
            .iter()
            .map(|e| (e.record.round, e.record.mechanism.as_str()))
            .collect();
        assert_eq!(charged, [(1, mechanism), (2, mechanism)], "{who}");
        for e in entries {
            let details = e.record.charged.as_ref().expect("format v2");
            assert_eq!(details.events, events, "{who}, round {}", e.record.round);
            assert_eq!(e.record.privacy_unit, "partner", "{who}");
        }
    };
    let theirs = consortia_ledger::load_entries(fed.path("state/privacy-ledger.json")).unwrap();
    check("coordinator", &theirs);
    for (name, _) in &fed.partners {
        let own = consortia_ledger::load_entries(fed.agent_state(name).join("ledger")).unwrap();
        check(name, &own);
    }
    let (stored, model, _) = final_model(&fed);
    assert_eq!(stored.rounds, 2);
    let mut pooled = RecommendationPartial::empty();
    for (name, path) in &fed.partners {
        let mut local = LocalData::load(path, &stored, name).expect("partner data");
        match local.evaluate(model.as_ref(), &[], &[]).expect("evaluate") {
            Evaluation::Recommendation(p) => pooled.merge(&p).expect("merge"),
            other => panic!("an MF evaluates as recommendation, not {}", other.kind()),
        }
    }
    let m = metrics(&pooled);
    println!(
        "{} ({secs:.1} s)",
        show(&format!("{mechanism}, 2 rounds, exact"), &m)
    );
    (fed, m)
}

/// Partner-level DP with local noise (DP-FedAvg around the ALS item step): the
/// federation of real processes completes, each round is charged as one Gaussian
/// mechanism in every ledger, and the final model's RMSE is reported. With C = 0.01 the
/// noise (z·C per value) stays small, and so does each round's step: the RMSE stays near
/// the initial model's (section 10 of BENCHMARKS.md has the 20-round figures).
#[test]
fn partner_level_local_dp_trains_the_matrix_factorisation_charged_in_every_ledger() {
    let z = calibrated_partner_z(2, 8.0);
    let mut task = partner_dp_task("local", 8.0, 0.01, z);
    task.rounds = 2;
    let (fed, m) = partner_dp_federation(&task, "dp-fedavg-gaussian");
    assert!(m.rmse.is_finite() && m.rmse < 1.1, "{m:?}");
    assert_eq!(m.examples, 20_256);
    for (name, _) in &fed.partners {
        let out = fed.read(&fed.path(&format!("logs/{name}.out")))
            + &fed.read(&fed.path(&format!("logs/{name}.err")));
        assert!(out.contains("dp-fedavg"), "{name}:\n{out}");
    }
}

/// Partner-level distributed DP under secure aggregation (each partner's ALS item delta
/// clipped and given its discrete Gaussian noise share as it is encoded, the encrypted
/// sum decrypted and averaged with unit weights): the federation completes, every
/// update is encrypted, each round is charged as the task's distributed discrete
/// Gaussian event in every ledger, and the final model's RMSE is reported.
#[test]
fn partner_level_distributed_dp_trains_the_matrix_factorisation_under_secure_aggregation() {
    let mut task = partner_dp_task("distributed", 8.0, 0.01, 3.0);
    task.rounds = 2;
    let (fed, m) = partner_dp_federation(&task, "distributed-discrete-gaussian");
    assert!(m.rmse.is_finite() && m.rmse < 1.1, "{m:?}");
    for (name, _) in &fed.partners {
        let out = fed.read(&fed.path(&format!("logs/{name}.out")))
            + &fed.read(&fed.path(&format!("logs/{name}.err")));
        assert!(out.contains("encrypted update sent"), "{name}:\n{out}");
        assert!(out.contains("ddg-partner"), "{name}:\n{out}");
    }
}
